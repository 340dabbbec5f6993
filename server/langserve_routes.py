"""The memchat graph behind LangServe (``/graph/invoke``, ``/graph/batch``, ``/graph/stream``, playground).

LangServe calls runnables asynchronously, and the SQLite checkpointer is sync only, so the compiled graph
is run through :class:`memchat.chat.MemChat` in a worker thread: the turn is atomic (a failed turn leaves the
thread unchanged), turns of one thread are serialized, and the thread shows up in ``/v1/threads``. The
thread comes from the ``X-Thread-ID`` header (or ``config.configurable.thread_id``), the user from
``X-User-ID`` (or ``configurable.user_id`` / the input's ``user_id``).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from langchain_core.messages import AnyMessage, BaseMessage, HumanMessage, SystemMessage, convert_to_messages
from langchain_core.runnables import ConfigurableFieldSpec, Runnable, RunnableConfig, RunnableLambda
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memchat.backends.llm import BackendBusy, BackendError, BackendRejected
from memchat.backends.persistence import ThreadBusy
from memchat.chat import MemChat
from memchat.memory.receipts import IdempotencyConflict
from memchat.nodes.common import text_of
from memchat.server.admission import IDEMPOTENCY_HEADER, ThreadGate, idempotency_key
from memchat.server.metrics import ServerMetrics
from memchat.server.schemas import USER_REQUIRED, APIError, GraphInputError, LLMParams, check_id, check_text
from memchat.server.tenancy import graph_config
from memchat.settings import Settings

RUN_SUFFIXES = ("/invoke", "/batch", "/stream", "/stream_log", "/stream_events")
MAX_JSON_DEPTH = 64  # far more than a turn needs; deep bodies crash parsers and validators (RecursionError)


def _coerce_messages(value: Any) -> Any:
    """Accept LangChain messages, their dicts, ``{"role", "content"}`` dicts, (role, text) pairs, strings."""
    if isinstance(value, list):
        return convert_to_messages(value)
    return value


class GraphInput(BaseModel):
    """A turn: the new user message (earlier turns come from the thread's checkpoint)."""

    messages: Annotated[list[AnyMessage], BeforeValidator(_coerce_messages)] = Field(
        description="The new user message last; a leading system message sets the thread's persona")
    persona: str | None = Field(None, description="Set or change the thread's persona")
    user_id: str | None = Field(None, description="User the long-term memory belongs to")


class GraphOutput(BaseModel):
    """The thread's state after the turn (the graph's output)."""

    model_config = ConfigDict(extra="allow")
    messages: list[AnyMessage] = Field(default_factory=list)
    turn: int = 0
    user_id: str | None = None
    slots: dict[str, Any] = Field(default_factory=dict)
    l1: list[dict[str, Any]] = Field(default_factory=list)
    l2: dict[str, Any] | None = None
    context: dict[str, Any] = Field(default_factory=dict)


CONFIG_SPECS = [
    ConfigurableFieldSpec(id="thread_id", annotation=str, name="Thread ID",
                          description="The conversation thread (the X-Thread-ID header overrides it)"),
    ConfigurableFieldSpec(id="user_id", annotation=str, name="User ID", default=None,
                          description="Whose long-term memory (the X-User-ID header overrides it)"),
    ConfigurableFieldSpec(id="llm_params", annotation=dict, name="LLM parameters", default=None,
                          description="max_tokens, temperature, top_p, stop, seed, response_format"),
    ConfigurableFieldSpec(id="idempotency_key", annotation=str, name="Idempotency key", default=None,
                          description="A retry with the same key on the thread returns the thread's state without "
                                      "running the turn again (the Idempotency-Key header sets it)"),
]


class _TurnLambda(RunnableLambda):  # type: ignore[type-arg]
    """A RunnableLambda that declares the configurable fields LangServe must let through."""

    @property
    def config_specs(self) -> list[ConfigurableFieldSpec]:
        return list(CONFIG_SPECS)


def _field(inp: Any, name: str) -> Any:
    return inp.get(name) if isinstance(inp, dict) else getattr(inp, name, None)


def _checked_id(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise GraphInputError(400, f"{what} must be a string")
    try:
        return check_id(value, what)
    except APIError as exc:
        raise GraphInputError(400, exc.message) from exc


@dataclass
class TurnArgs:
    """A validated turn for the graph routes."""

    thread_id: str
    message: str
    user_id: str | None
    persona: str | None
    llm_params: dict[str, Any] | None
    idempotency_key: str | None = None


def parse_turn(inp: Any, conf: dict[str, Any], max_chars: int, require_user: bool = False) -> TurnArgs:
    """Validate one graph input and its ``configurable``; raises :class:`GraphInputError` (400/413)."""
    tid = _checked_id(conf.get("thread_id"), "thread_id")
    if not tid:
        raise GraphInputError(400, "a thread id is required (X-Thread-ID header or configurable.thread_id)")
    raw = _field(inp, "messages") or []
    try:
        msgs: list[BaseMessage] = convert_to_messages(raw) if raw else []
    except (ValueError, TypeError, KeyError, NotImplementedError, RecursionError) as exc:
        raise GraphInputError(400, f"invalid messages: {str(exc)[:300]}") from exc
    human = next((m for m in reversed(msgs) if isinstance(m, HumanMessage)), None)
    if human is None or not text_of(human).strip():
        raise GraphInputError(400, "the input needs a non-empty user message")
    message = text_of(human)
    try:
        check_text(message, "messages")
    except APIError as exc:
        raise GraphInputError(400, exc.message) from exc
    if len(message) > max_chars:
        raise GraphInputError(413, f"the user message has {len(message)} characters; the limit is {max_chars} "
                                   "(MEMCHAT_MAX_REQUEST_CHARS)", code="message_too_long")
    persona = _field(inp, "persona")
    if persona is None and msgs and isinstance(msgs[0], SystemMessage):
        persona = text_of(msgs[0]) or None
    if persona is not None and not isinstance(persona, str):
        raise GraphInputError(400, "persona must be a string")
    if persona is not None:
        try:
            check_text(persona, "persona")
        except APIError as exc:
            raise GraphInputError(400, exc.message) from exc
    user = _checked_id(conf.get("user_id") or _field(inp, "user_id"), "user_id")
    if require_user and not user:
        raise GraphInputError(400, USER_REQUIRED, code="user_required")
    key = conf.get("idempotency_key")
    try:
        key = idempotency_key({IDEMPOTENCY_HEADER: key}) if key is not None else None
    except (APIError, AttributeError) as exc:
        raise GraphInputError(400, getattr(exc, "message", "configurable.idempotency_key must be a string")) from exc
    return TurnArgs(tid, message, user, persona, check_llm_params(conf.get("llm_params")), key)


def check_llm_params(params: Any) -> dict[str, Any] | None:
    """``configurable.llm_params`` validated like the OpenAI route's parameters (400 when ill-typed)."""
    if params is None:
        return None
    if not isinstance(params, dict):
        raise GraphInputError(400, "configurable.llm_params must be an object")
    try:
        return LLMParams.model_validate(params).params() or None
    except ValidationError as exc:
        errs = exc.errors()
        where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errs[:3])
        raise GraphInputError(400, f"invalid configurable.llm_params: {where}") from exc
    except APIError as exc:
        raise GraphInputError(400, f"invalid configurable.llm_params: {exc.message}") from exc


def graph_runnable(memchat: MemChat, metrics: ServerMetrics | None = None,
                   settings: Settings | None = None, gate: ThreadGate | None = None) -> Runnable[Any, Any]:
    """The graph as a runnable that runs one atomic MemChat turn per call (sync; async runs in a thread).

    Invalid input raises :class:`GraphInputError` (answered 400/413 by the app, not 500)."""
    max_chars = (settings or memchat.settings).max_request_chars
    require_user = (settings or memchat.settings).require_user

    def run_turn(inp: Any, config: RunnableConfig) -> dict[str, Any]:
        t = parse_turn(inp, dict(config.get("configurable") or {}), max_chars, require_user)
        obs = metrics.turn("graph") if metrics is not None else None
        try:
            with gate.held(t.thread_id) if gate is not None else contextlib.nullcontext():
                result = memchat.turn(t.thread_id, t.message, user_id=t.user_id, persona=t.persona,
                                      llm_params=t.llm_params, idempotency_key=t.idempotency_key,
                                      on_token=(lambda _t: obs.token()) if obs is not None else None)
        except (APIError, ThreadBusy, IdempotencyConflict) as exc:  # busy thread, reused key: 409 / 422
            if obs is not None:
                obs.failed("thread_busy" if not isinstance(exc, IdempotencyConflict) else "idempotency_key_reused")
            status, code = (422, "idempotency_key_reused") if isinstance(exc, IdempotencyConflict) else (409, "thread_busy")
            raise GraphInputError(status, getattr(exc, "message", None) or str(exc), code=code) from exc
        except BaseException as exc:
            if obs is not None:
                code = "backend_timeout" if "Timeout" in type(exc).__name__ else (
                    "backend_rejected" if isinstance(exc, BackendRejected) else
                    "backend_busy" if isinstance(exc, BackendBusy) else
                    "backend_unavailable" if isinstance(exc, BackendError) else "error")
                obs.failed(code)
            raise
        if obs is not None:
            usage = dict(result.usage or {})
            obs.result({"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens")},
                       result.cached_tokens)
        return memchat.state(t.thread_id)

    runnable: Runnable[Any, Any] = _TurnLambda(run_turn, name="memchat")
    return runnable.with_types(input_type=GraphInput, output_type=GraphOutput)


class GraphPrecheck:
    """Validates the turns sent to the graph's run routes before LangServe starts answering: LangServe's
    ``stream_log`` / ``stream_events`` would otherwise send an error event and then raise after the
    response started. A body that is not JSON is a 400; other shapes are left to LangServe (its 422)."""

    def __init__(self, app: ASGIApp, max_chars: int, path: str = "/graph", require_user: bool = False) -> None:
        self.app = app
        self.max_chars = max_chars
        self.require_user = require_user
        self.paths = {f"{path}{suffix}" for suffix in RUN_SUFFIXES}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        principal = scope.get("state", {}).get("principal")
        error = self.check(body, Headers(scope=scope), scope["path"].endswith("/batch"),
                           getattr(principal, "users", None))
        if error is not None:
            await APIError(error.status, error.message, code=error.code).response()(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def check(self, body: bytes, headers: Headers, batch: bool, users: tuple[str, ...] | None = None
              ) -> GraphInputError | None:
        """The error to answer for this body, or ``None`` to let it through. A batch is checked whole, so
        that one bad item refuses the batch before any item runs (the good ones would commit). ``users``: a
        tenant key's users (the first is the default; an input naming another is a 403)."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep for the parser
            return GraphInputError(400, "the request body is not valid JSON (or is nested too deeply)")
        if json_depth(data) > MAX_JSON_DEPTH:
            return GraphInputError(400, f"the request body is nested deeper than {MAX_JSON_DEPTH} levels")
        if not isinstance(data, dict):
            return None
        try:
            inputs = data.get("inputs") if batch else [data.get("input")]
            configs = data.get("config")
            if not isinstance(inputs, list):
                return None
            configs = configs if isinstance(configs, list) else [configs] * len(inputs)
            for inp, config in zip(inputs, configs):
                if not isinstance(inp, dict):
                    return None
                conf = (config or {}).get("configurable") if isinstance(config, dict) else None
                conf = dict(conf) if isinstance(conf, dict) else {}
                for header, key in (("x-thread-id", "thread_id"), ("x-user-id", "user_id"),
                                    (IDEMPOTENCY_HEADER, "idempotency_key")):
                    if headers.get(header):
                        conf[key] = headers[header]
                if users and inp.get("user_id") not in (None, "", *users):
                    return GraphInputError(403, "this API key may not act for the input's user_id", code="forbidden")
                if users and not conf.get("user_id"):
                    conf["user_id"] = users[0]
                parse_turn(inp, conf, self.max_chars, self.require_user)
        except GraphInputError as exc:
            return exc
        except Exception:  # anything else is LangServe's to judge
            return None
        return None


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in parsed JSON (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


async def per_request_config(config: dict[str, Any], request: Request) -> dict[str, Any]:
    """Thread from ``X-Thread-ID`` and user from ``X-User-ID`` into ``configurable`` (LangServe drops them);
    a tenant key's user and thread are checked (:func:`memchat.server.tenancy.graph_config`)."""
    config = dict(config or {})
    conf = dict(config.get("configurable") or {})
    try:
        tid = check_id(request.headers.get("x-thread-id"), "thread_id")
        user = check_id(request.headers.get("x-user-id"), "user_id")
    except APIError as exc:
        raise HTTPException(400, exc.message) from exc
    if tid:
        conf["thread_id"] = tid
    if user:
        conf["user_id"] = user
    if request.headers.get(IDEMPOTENCY_HEADER) is not None:
        if request.url.path.endswith("/batch"):
            raise HTTPException(400, "in a batch, send one configurable.idempotency_key per item, not the "
                                     "Idempotency-Key header")
        conf["idempotency_key"] = request.headers[IDEMPOTENCY_HEADER]
    if not conf.get("thread_id") and request.url.path.endswith(RUN_SUFFIXES):
        raise HTTPException(400, "send the thread id in the X-Thread-ID header (or config.configurable.thread_id)")
    config["configurable"] = await graph_config(conf, request)
    return config


def mount_graph(app: FastAPI, memchat: MemChat, metrics: ServerMetrics | None = None,
                settings: Settings | None = None, path: str = "/graph", gate: ThreadGate | None = None) -> None:
    """Mount the graph with ``langserve.add_routes`` (add :class:`GraphPrecheck` as the innermost
    middleware too)."""
    from langserve import add_routes

    add_routes(app, graph_runnable(memchat, metrics, settings, gate), path=path,
               per_req_config_modifier=per_request_config,
               enabled_endpoints=("invoke", "batch", "stream", "stream_log", "stream_events", "input_schema",
                                  "output_schema", "config_schema", "playground"))
