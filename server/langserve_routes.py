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
from nodes.common import text_of
from server.schemas import APIError, check_id

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


def graph_runnable(memchat: MemChat) -> Runnable[Any, Any]:
    """The graph as a runnable that runs one atomic MemChat turn per call (sync; async runs in a thread)."""

    def run_turn(inp: Any, config: RunnableConfig) -> dict[str, Any]:
        conf = dict(config.get("configurable") or {})
        tid = conf.get("thread_id")
        if not tid:
            raise ValueError("a thread id is required (X-Thread-ID header or configurable.thread_id)")
        raw = _field(inp, "messages") or []
        msgs: list[BaseMessage] = convert_to_messages(raw) if raw else []
        human = next((m for m in reversed(msgs) if isinstance(m, HumanMessage)), None)
        if human is None or not text_of(human).strip():
            raise ValueError("the input needs a non-empty user message")
        persona = _field(inp, "persona")
        if persona is None and msgs and isinstance(msgs[0], SystemMessage):
            persona = text_of(msgs[0]) or None
        user = conf.get("user_id") or _field(inp, "user_id")
        memchat.turn(str(tid), text_of(human), user_id=user, persona=persona,
                     llm_params=conf.get("llm_params"))
        return memchat.state(str(tid))

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


def mount_graph(app: FastAPI, memchat: MemChat, path: str = "/graph") -> None:
    """Mount the graph with ``langserve.add_routes``."""
    from langserve import add_routes

    add_routes(app, graph_runnable(memchat), path=path, per_req_config_modifier=per_request_config,
               enabled_endpoints=("invoke", "batch", "stream", "stream_log", "stream_events", "input_schema",
                                  "output_schema", "config_schema", "playground"))
