"""The memchat graph behind LangServe (``/graph/invoke``, ``/graph/batch``, ``/graph/stream``, playground).

LangServe calls runnables asynchronously, and the SQLite checkpointer is sync only, so the compiled graph
is run through :class:`memchat.chat.MemChat` in a worker thread (``/graph/stream`` yields ``{"token": ...}``
chunks as the reply streams, then the thread's state): the turn is atomic (a failed turn leaves the
thread unchanged), turns of one thread are serialized, and the thread shows up in ``/v1/threads``. The
thread comes from the ``X-Thread-ID`` header (or ``config.configurable.thread_id``), the user from
``X-User-ID`` (or ``configurable.user_id`` / the input's ``user_id``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from langchain_core.messages import AnyMessage, BaseMessage, HumanMessage, SystemMessage, convert_to_messages
from langchain_core.runnables import ConfigurableFieldSpec, Runnable, RunnableConfig, RunnableLambda
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from memchat.backends.llm import BackendBusy, BackendError, BackendRejected
from memchat.backends.persistence import ThreadBusy
from memchat.chat import MemChat, TurnResult
from memchat.memory.receipts import IdempotencyConflict
from memchat.nodes.common import text_of
from memchat.server.admission import IDEMPOTENCY_HEADER, ThreadGate, idempotency_key
from memchat.server.bridge import iterate_in_thread
from memchat.server.metrics import ServerMetrics
from memchat.server.schemas import USER_REQUIRED, APIError, GraphInputError, LLMParams, check_id, check_text
from memchat.server.tenancy import graph_config
from memchat.settings import Settings

RUN_SUFFIXES = ("/invoke", "/batch", "/stream", "/stream_log", "/stream_events")


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
    last_prompt: dict[str, Any] = Field(default_factory=dict)


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


def graph_runnable(memchat: MemChat, metrics: ServerMetrics | None = None, settings: Settings | None = None,
                   gate: ThreadGate | None = None, pool: Callable[[], Executor] | None = None) -> Runnable[Any, Any]:
    """The graph as a runnable that runs one atomic MemChat turn per call. Streamed (``/graph/stream``,
    ``RemoteRunnable.stream``), it yields ``{"token": text}`` per reply token as the model writes it, then the
    thread's state; invoked, it returns the state (chunks that do not add up replace each other). Async runs go
    through ``pool`` (the server's workers), and a client that leaves mid-stream does not cut the turn.

    Invalid input raises :class:`GraphInputError` (answered 400/413 by the app, not 500)."""
    max_chars = (settings or memchat.settings).max_request_chars
    require_user = (settings or memchat.settings).require_user

    def run_turn(inp: Any, config: RunnableConfig) -> Iterator[dict[str, Any]]:
        t = parse_turn(inp, dict(config.get("configurable") or {}), max_chars, require_user)
        obs = metrics.turn("graph") if metrics is not None else None
        result: TurnResult | None = None
        try:
            with gate.held(t.thread_id) if gate is not None else contextlib.nullcontext():
                for item in memchat.stream_turn(t.thread_id, t.message, user_id=t.user_id, persona=t.persona,
                                                llm_params=t.llm_params, idempotency_key=t.idempotency_key):
                    if isinstance(item, TurnResult):
                        result = item
                        continue
                    if obs is not None:
                        obs.token()
                    yield {"token": item}
        except (APIError, ThreadBusy, IdempotencyConflict) as exc:  # busy thread, reused key: 409 / 422
            if obs is not None:
                obs.failed("thread_busy" if not isinstance(exc, IdempotencyConflict) else "idempotency_key_reused")
            status, code = (422, "idempotency_key_reused") if isinstance(exc, IdempotencyConflict) else (409, "thread_busy")
            raise GraphInputError(status, getattr(exc, "message", None) or str(exc), code=code) from exc
        except BaseException as exc:
            if obs is not None:
                obs.failed(_failure_code(exc))
            raise
        if obs is not None and result is not None:
            usage = dict(result.usage or {})
            obs.result({"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens")},
                       result.cached_tokens)
        yield memchat.state(t.thread_id)

    async def arun_turn(inp: Any, config: RunnableConfig) -> AsyncIterator[dict[str, Any]]:
        async for item in iterate_in_thread(pool() if pool is not None else None, lambda: run_turn(inp, config),
                                            cancel_on_close=False):
            yield item

    runnable: Runnable[Any, Any] = _TurnLambda(run_turn, afunc=arun_turn, name="memchat")  # type: ignore[arg-type]  # an async generator with config: accepted at run time
    return runnable.with_types(input_type=GraphInput, output_type=GraphOutput)


def _failure_code(exc: BaseException) -> str:
    """The metrics label of a failed turn."""
    if "Timeout" in type(exc).__name__:
        return "backend_timeout"
    if isinstance(exc, BackendRejected):
        return "backend_rejected"
    if isinstance(exc, BackendBusy):
        return "backend_busy"
    return "backend_unavailable" if isinstance(exc, BackendError) else "error"


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
                settings: Settings | None = None, path: str = "/graph", gate: ThreadGate | None = None,
                pool: Callable[[], Executor] | None = None) -> None:
    """Mount the graph with ``langserve.add_routes`` (add :class:`GraphPrecheck` as the innermost
    middleware too)."""
    from langserve import add_routes

    add_routes(app, graph_runnable(memchat, metrics, settings, gate, pool), path=path,
               per_req_config_modifier=per_request_config,
               enabled_endpoints=("invoke", "batch", "stream", "stream_log", "stream_events", "input_schema",
                                  "output_schema", "config_schema", "playground"))
