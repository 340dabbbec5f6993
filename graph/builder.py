"""The graph, wired in one place: extract_facts → update_slots → [summarize] → retrieve → respond."""

from __future__ import annotations

from functools import partial
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore

from memchat.backends.engine import Engine, get_engine
from memchat.memory.state import State
from memchat.nodes import extract_facts, respond, retrieve, should_summarize, summarize, update_slots
from memchat.settings import Settings


def _wire(engine: Engine | None) -> StateGraph:
    def bind(fn: Any) -> Any:
        if engine is None:
            return fn
        bound = partial(fn, engine=engine)
        bound.__name__ = fn.__name__  # type: ignore[attr-defined]
        return bound

    def route(state: State) -> str:
        if engine is None:
            return should_summarize(state)
        return should_summarize(state, {"configurable": {"__memchat_engine": engine}})

    g = StateGraph(State)
    g.add_node("extract_facts", bind(extract_facts))
    g.add_node("update_slots", bind(update_slots))
    g.add_node("summarize", bind(summarize))
    g.add_node("retrieve", bind(retrieve))
    g.add_node("respond", bind(respond))
    g.add_edge(START, "extract_facts")
    g.add_edge("extract_facts", "update_slots")
    g.add_conditional_edges("update_slots", route, {"summarize": "summarize", "retrieve": "retrieve"})
    g.add_edge("summarize", "retrieve")
    g.add_edge("retrieve", "respond")
    g.add_edge("respond", END)
    return g


def build_graph(settings: Settings | None = None, checkpointer: BaseCheckpointSaver[Any] | bool | None = None,
                store: BaseStore | bool | None = None, *, engine: Engine | None = None) -> CompiledStateGraph:
    """Compile the graph. ``checkpointer=True``/``store=True`` build the configured defaults
    (SQLite under the data dir, or PostgreSQL by ``MEMCHAT_CHECKPOINT_URL``)."""
    eng = engine or get_engine(settings)
    if checkpointer is True:
        from memchat.backends.persistence import make_checkpointer

        checkpointer = make_checkpointer(eng.settings)
    if store is True:
        from memchat.backends.persistence import make_store

        store = make_store(eng.settings)
    compiled = _wire(eng).compile(checkpointer=checkpointer or None, store=store or None, name="memchat")
    compiled.engine = eng  # type: ignore[attr-defined]
    return compiled


# For `langgraph dev` / LangGraph Platform: no checkpointer (the platform supplies one), settings from env.
graph = _wire(None).compile(name="memchat")
