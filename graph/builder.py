"""The graph, wired in one place: extract_facts → update_slots → [summarize] → retrieve → respond."""

from __future__ import annotations

from functools import partial
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore

from graph.engine import Engine, get_engine
from graph.memory_steps import add_memory_nodes
from graph.settings import Settings
from graph.state import State
from nodes import respond, should_summarize


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
    add_memory_nodes(g, bind, route, then="respond")  # the same four nodes as graph.memory_graph
    g.add_node("respond", bind(respond))
    g.add_edge("respond", END)
    return g


def build_graph(settings: Settings | None = None, checkpointer: BaseCheckpointSaver[Any] | bool | None = None,
                store: BaseStore | bool | None = None, *, engine: Engine | None = None) -> CompiledStateGraph:
    """Compile the graph. ``checkpointer=True``/``store=True`` build the configured defaults
    (SQLite under the data dir, or PostgreSQL by ``MEMCHAT_CHECKPOINT_URL``)."""
    eng = engine or get_engine(settings)
    if checkpointer is True:
        from graph.persistence import make_checkpointer

        checkpointer = make_checkpointer(eng.settings)
    if store is True:
        from graph.persistence import make_store

        store = make_store(eng.settings)
    compiled = _wire(eng).compile(checkpointer=checkpointer or None, store=store or None, name="memchat")
    compiled.engine = eng  # type: ignore[attr-defined]
    return compiled


# For `langgraph dev` / LangGraph Platform: no checkpointer (the platform supplies one), settings from env.
graph = _wire(None).compile(name="memchat")
