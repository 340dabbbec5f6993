"""The memchat graph behind LangServe (``/graph/invoke``, ``/graph/batch``, ``/graph/stream``, playground).

LangServe calls runnables asynchronously, and the SQLite checkpointer is sync only, so the compiled graph
is run through :class:`graph.chat.MemChat` in a worker thread: the turn is atomic (a failed turn leaves the
thread unchanged), turns of one thread are serialized, and the thread shows up in ``/v1/threads``. The
thread comes from the ``X-Thread-ID`` header (or ``config.configurable.thread_id``), the user from
``X-User-ID`` (or ``configurable.user_id`` / the input's ``user_id``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from langchain_core.messages import AnyMessage, BaseMessage, HumanMessage, SystemMessage, convert_to_messages
from langchain_core.runnables import ConfigurableFieldSpec, Runnable, RunnableConfig, RunnableLambda
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from graph.chat import MemChat
from graph.llm import BackendError
from graph.settings import Settings
from nodes.common import text_of
from server.metrics import ServerMetrics
from server.schemas import APIError, GraphInputError, check_id, check_text

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
    context: dict[str, Any] = Field(default_factory=dict)


CONFIG_SPECS = [
    ConfigurableFieldSpec(id="thread_id", annotation=str, name="Thread ID",
                          description="The conversation thread (the X-Thread-ID header overrides it)"),
    ConfigurableFieldSpec(id="user_id", annotation=str, name="User ID", default=None,
                          description="Whose long-term memory (the X-User-ID header overrides it)"),
    ConfigurableFieldSpec(id="llm_params", annotation=dict, name="LLM parameters", default=None,
                          description="max_tokens, temperature, top_p, stop, seed, response_format"),
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


def graph_runnable(memchat: MemChat, metrics: ServerMetrics | None = None,
                   settings: Settings | None = None) -> Runnable[Any, Any]:
    """The graph as a runnable that runs one atomic MemChat turn per call (sync; async runs in a thread).

    Invalid input raises :class:`GraphInputError` (answered 400/413 by the app, not 500)."""
    max_chars = (settings or memchat.settings).max_request_chars

    def run_turn(inp: Any, config: RunnableConfig) -> dict[str, Any]:
        conf = dict(config.get("configurable") or {})
        tid = _checked_id(conf.get("thread_id"), "thread_id")
        if not tid:
            raise GraphInputError(400, "a thread id is required (X-Thread-ID header or configurable.thread_id)")
        raw = _field(inp, "messages") or []
        try:
            msgs: list[BaseMessage] = convert_to_messages(raw) if raw else []
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise GraphInputError(400, f"invalid messages: {exc}") from exc
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
        user = _checked_id(conf.get("user_id") or _field(inp, "user_id"), "user_id")
        params = conf.get("llm_params")
        if params is not None and not isinstance(params, dict):
            raise GraphInputError(400, "configurable.llm_params must be an object")
        obs = metrics.turn("graph") if metrics is not None else None
        try:
            result = memchat.turn(tid, message, user_id=user, persona=persona, llm_params=params,
                                  on_token=(lambda _t: obs.token()) if obs is not None else None)
        except BaseException as exc:
            if obs is not None:
                code = "backend_timeout" if "Timeout" in type(exc).__name__ else (
                    "backend_unavailable" if isinstance(exc, BackendError) else "error")
                obs.failed(code)
            raise
        if obs is not None:
            usage = dict(result.usage or {})
            obs.result({"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens")},
                       result.cached_tokens)
        return memchat.state(tid)

    runnable: Runnable[Any, Any] = _TurnLambda(run_turn, name="memchat")
    return runnable.with_types(input_type=GraphInput, output_type=GraphOutput)


def per_request_config(config: dict[str, Any], request: Request) -> dict[str, Any]:
    """Thread from ``X-Thread-ID`` and user from ``X-User-ID`` into ``configurable`` (LangServe drops them)."""
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
    if not conf.get("thread_id") and request.url.path.endswith(RUN_SUFFIXES):
        raise HTTPException(400, "send the thread id in the X-Thread-ID header (or config.configurable.thread_id)")
    config["configurable"] = conf
    return config


def mount_graph(app: FastAPI, memchat: MemChat, metrics: ServerMetrics | None = None,
                settings: Settings | None = None, path: str = "/graph") -> None:
    """Mount the graph with ``langserve.add_routes``."""
    from langserve import add_routes

    add_routes(app, graph_runnable(memchat, metrics, settings), path=path,
               per_req_config_modifier=per_request_config,
               enabled_endpoints=("invoke", "batch", "stream", "stream_log", "stream_events", "input_schema",
                                  "output_schema", "config_schema", "playground"))
