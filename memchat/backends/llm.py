"""One LLM client path: langchain-openai ``ChatOpenAI`` against any OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_openai import ChatOpenAI

from memchat.settings import Settings


class BackendError(RuntimeError):
    """The LLM backend is unreachable, failing or misconfigured (maps to HTTP 503)."""


class BackendTimeout(BackendError):
    """The LLM backend did not answer within ``MEMCHAT_LLM_TIMEOUT`` (maps to HTTP 504)."""


class BackendRejected(BackendError):
    """The backend refused the request because of what the client asked for (its 400/413/422: e.g.
    ``max_tokens`` beyond the context window); maps to HTTP 400 with the backend's message."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class BackendBusy(BackendError):
    """The backend is rate limiting (its 429); maps to HTTP 503 with ``Retry-After``."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


CLIENT_FAULT_STATUSES = (400, 413, 422)


@dataclass
class BackendInfo:
    """What the backend says it serves."""

    base_url: str
    model: str
    context_length: int | None
    kind: str  # "embedded", "sglang" or "openai-compatible"


def resolve_base_url(settings: Settings) -> str:
    """The configured URL, or the embedded llama.cpp server's (started on demand)."""
    if settings.llm_base_url:
        return settings.llm_base_url
    from memchat.backends.local_server import ensure_local_server

    return ensure_local_server(settings)


def probe_backend(settings: Settings, base_url: str | None = None) -> BackendInfo:
    """Ask the backend what it serves (``/v1/models``; ``/get_model_info`` on SGLang).

    Raises :class:`BackendError` with a clear message for a wrong URL or key, and when the
    prompt budget is larger than the backend's context window.
    """
    url = base_url or resolve_base_url(settings)
    headers = {"Authorization": f"Bearer {settings.llm_api_key.get_secret_value()}"}
    try:
        r = httpx.get(f"{url}/models", headers=headers, timeout=min(10.0, settings.llm_timeout))
    except httpx.HTTPError as exc:
        raise BackendError(f"LLM server at {url} is unreachable: {exc}") from exc
    if r.status_code in (401, 403):
        raise BackendError(f"LLM server at {url} refused the API key (HTTP {r.status_code}); check MEMCHAT_LLM_API_KEY")
    if r.status_code != 200:
        raise BackendError(f"LLM server at {url} answered HTTP {r.status_code} on /models; is it OpenAI-compatible?")
    data = r.json().get("data") or []
    if not data:
        raise BackendError(f"LLM server at {url} serves no model")
    ids = [m.get("id") for m in data]
    model = settings.llm_model or str(ids[0])
    if settings.llm_model and settings.llm_model not in ids:
        raise BackendError(f"LLM server at {url} does not serve {settings.llm_model!r}; it serves {ids}")
    entry = next((m for m in data if m.get("id") == model), data[0])
    ctx = entry.get("max_model_len") or entry.get("context_length")
    kind = "embedded" if not settings.llm_base_url else "openai-compatible"
    root = url[: -len("/v1")] if url.endswith("/v1") else url
    try:
        info = httpx.get(f"{root}/get_model_info", headers=headers, timeout=5.0)
        if info.status_code == 200 and "model_path" in info.json():
            kind = "sglang"
    except (httpx.HTTPError, ValueError):
        pass
    if settings.embedded:
        ctx = settings.local_n_ctx
    if ctx and settings.max_input_tokens > int(ctx) and not settings.embedded:
        raise BackendError(
            f"MEMCHAT_MAX_INPUT_TOKENS={settings.max_input_tokens} exceeds the context length {ctx} "
            f"of {model} at {url}; lower it or start the server with a longer context"
        )
    return BackendInfo(base_url=url, model=model, context_length=int(ctx) if ctx else None, kind=kind)


class MemchatChatOpenAI(ChatOpenAI):
    """``ChatOpenAI`` that hands plain-text messages to the server as they are.

    openai-python runs every request body through ``maybe_transform``, which walks each message through
    every member of the message-parameter union (and their fields' type hints) to apply aliases that plain
    ``{"role", "content": str}`` messages never have: ~3 ms of Python per 15-message request, and under
    ``memchat bench load`` (respond + extraction + summaries) 15-19 % of the samples in which the server
    held the GIL (``py-spy record --gil``, docs/profile.md). Such messages therefore travel in
    ``extra_body``, which the SDK merges into the JSON body untransformed (its keys take precedence): the
    bytes the server receives are the same. Messages with content parts keep the SDK's path.
    """

    def _get_request_payload(self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        msgs = payload.get("messages")
        if isinstance(msgs, list) and msgs and all(_plain(m) for m in msgs):
            payload["extra_body"] = {**(payload.get("extra_body") or {}), "messages": msgs}
            payload["messages"] = []
        return payload


def _plain(message: Any) -> bool:
    """A message the SDK's transform would return unchanged: string values only (no parts, no tool calls)."""
    return isinstance(message, dict) and all(isinstance(v, str) for v in message.values())


class LlamaCppChatOpenAI(MemchatChatOpenAI):
    """``ChatOpenAI`` for llama-cpp-python's server, which knows ``max_tokens`` but not ``max_completion_tokens``.

    The server silently ignores the newer name and generates until its context is full (8K tokens of
    a looping base model: minutes at 100 % CPU, while the client times out, retries and queues behind
    it). Every reply cap memchat sets (reply, summary, extraction) goes through this payload.
    """

    def _get_request_payload(self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        cap = payload.pop("max_completion_tokens", None)
        if cap is not None:
            payload["max_tokens"] = cap
        return payload


def make_chat_model(settings: Settings, base_url: str | None = None, **overrides: Any) -> BaseChatModel:
    """A ``ChatOpenAI`` for the configured (or embedded) server, streaming usage included."""
    url = base_url or resolve_base_url(settings)
    stop = list(settings.llm_stop) or None
    kwargs: dict[str, Any] = dict(
        base_url=url,
        api_key=settings.llm_api_key.get_secret_value() or "EMPTY",
        model=settings.llm_model or ("gemma-3-270m" if settings.embedded else "default"),
        timeout=settings.llm_timeout,
        max_retries=settings.llm_max_retries,
        temperature=settings.llm_temperature,
        max_completion_tokens=settings.llm_max_tokens,
        stream_usage=True,
        stop_sequences=stop,
    )
    kwargs.update(overrides)
    return LlamaCppChatOpenAI(**kwargs) if settings.embedded else MemchatChatOpenAI(**kwargs)


def cached_tokens(message: BaseMessage) -> int | None:
    """Cached prompt tokens reported by the server (SGLang omits the field when it is 0)."""
    if not isinstance(message, AIMessage) or not message.usage_metadata:
        return None
    details = message.usage_metadata.get("input_token_details") or {}
    value = details.get("cache_read")
    return int(value) if value is not None else None


def _backend_message(exc: Any) -> str:
    """The backend's own error message (OpenAI / SGLang / vLLM error bodies), at most 500 characters."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        msg = (inner if isinstance(inner, dict) else body).get("message")
        if isinstance(msg, str) and msg.strip():
            return msg.strip()[:500]
    return str(getattr(exc, "message", None) or exc)[:500]


def _retry_after(exc: Any) -> int:
    """Seconds from the backend's ``Retry-After`` header (1 to 600; 1 when absent or not a number)."""
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return min(600, max(1, int(float(value)))) if value else 1
    except ValueError:
        return 1


def _status_error(exc: BaseException, kind: type[Any]) -> Any:
    """The HTTP status error of the backend behind ``exc`` (itself, or its cause when a wrapper re-raised it)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None or isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def classify_error(exc: BaseException) -> BackendError:
    """Map a client exception to :class:`BackendError` and its kinds: :class:`BackendTimeout`,
    :class:`BackendRejected` (the backend refused what the client asked for), :class:`BackendBusy` (429).
    401/403 stay plain :class:`BackendError`: a wrong backend key is the server's misconfiguration."""
    import openai

    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException, TimeoutError)):
        return BackendTimeout(f"LLM backend timed out: {exc}")
    status = _status_error(exc, openai.APIStatusError)
    if status is not None and status.status_code in CLIENT_FAULT_STATUSES:
        return BackendRejected(f"the LLM backend rejected the request: {_backend_message(status)}",
                               status.status_code)
    if status is not None and status.status_code == 429:
        return BackendBusy(f"the LLM backend is rate limiting: {_backend_message(status)}", _retry_after(status))
    return BackendError(f"LLM backend failed: {type(exc).__name__}: {exc}")


def response_format_for(settings: Settings, fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """Translate an OpenAI ``response_format`` for the backend (llama.cpp wants ``json_object`` + ``schema``)."""
    if not fmt or fmt.get("type") == "text":
        return None
    if not settings.embedded:
        return fmt
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
        return {"type": "json_object", "schema": schema}
    return {"type": "json_object", **({"schema": fmt["schema"]} if "schema" in fmt else {})}


def json_schema_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI ``json_schema`` response format."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": False}}


def generation_params(settings: Settings, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Per-request generation parameters (OpenAI names) as ``bind`` arguments of the chat model."""
    params = dict(params or {})
    out: dict[str, Any] = {}
    if params.get("max_tokens") is not None:
        out["max_completion_tokens"] = int(params["max_tokens"])
    for k in ("temperature", "top_p", "seed"):
        if params.get(k) is not None:
            out[k] = params[k]
    if params.get("stop"):
        out["stop"] = [params["stop"]] if isinstance(params["stop"], str) else list(params["stop"])
    fmt = response_format_for(settings, params.get("response_format"))
    if fmt:
        out["response_format"] = fmt
    return out
