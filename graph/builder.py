"""The graph, wired in one place: extract_facts → update_slots → [summarize] → retrieve → respond.

Every entry point builds it here from an explicit services object (:class:`~memchat.backends.engine.Engine`):
``langgraph dev`` (``graph``, below), :class:`~memchat.chat.MemChat` (hence the server, the CLI and the benches).
The nodes receive that engine and nothing else; per-run values come through ``context`` (:class:`Context`).
Turns are atomic in the graph itself (:mod:`memchat.graph.atomic`): a new message first rolls back a turn
that failed half-way.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore

from memchat.backends.engine import Engine, shared_engine
from memchat.graph.atomic import AtomicGraph
from memchat.graph.memory_steps import add_memory_nodes
from memchat.memory.state import Context, State
from memchat.nodes import respond, should_summarize
from memchat.settings import Settings, get_settings


def _wire(engine: Engine) -> StateGraph[State, Context, State, State]:
    def bind(fn: Any) -> Any:
        bound = partial(fn, engine=engine)
        bound.__name__ = fn.__name__  # type: ignore[attr-defined]
        return bound

    def route(state: State) -> str:
        return should_summarize(state, engine.settings)

    g = StateGraph(State, context_schema=Context)
    add_memory_nodes(g, bind, route, then="respond")  # the same four nodes as memchat.graph.memory_graph
    g.add_node("respond", bind(respond))
    g.add_edge("respond", END)
    return g


def build_graph(settings: Settings | None = None, checkpointer: BaseCheckpointSaver[Any] | bool | None = None,
                store: BaseStore | bool | None = None, *, engine: Engine | None = None
                ) -> CompiledStateGraph[State, Context, State, State]:
    """Compile the graph on ``engine`` (else the shared engine of ``settings``, else of the environment).
    ``checkpointer=True``/``store=True`` build the configured defaults (SQLite under the data dir, or PostgreSQL
    by ``MEMCHAT_CHECKPOINT_URL``)."""
    eng = engine or shared_engine(settings or get_settings())
    if checkpointer is True:
        from memchat.backends.persistence import make_checkpointer

        checkpointer = make_checkpointer(eng.settings)
    if store is True:
        from memchat.backends.persistence import make_store

        store = make_store(eng.settings)
    compiled = _wire(eng).compile(checkpointer=checkpointer or None, store=store or None, name="memchat")
    # the same object as a CompiledStateGraph, but a new message never stacks on a half-finished turn
    return AtomicGraph(**{k: v for k, v in compiled.__dict__.items() if k != "__orig_class__"})


# For `langgraph dev` / LangGraph Platform (langgraph.json): the same build_graph, settings from the environment,
# no checkpointer (the platform supplies one). Cheap: the engine builds its backends on first use.
graph = build_graph()
