"""memchat memory as a subgraph for hand-built LangGraph agents.

``memory_graph()`` runs the four memory nodes (extract_facts → update_slots → [summarize] → retrieve, the
same wiring memchat's own graph uses) and writes the turn's prefix-stable prompt to ``prompt``. Put it in
front of your model/tool nodes (state :class:`AgentMemoryState`), call the model on
``prompt_messages(state)`` (the prompt + the turn's tool calls and results), and end the turn with
``remember_node(...)``: it stores the turn (messages, tool results, facts, audit, profile), keeps only
the final reply in ``messages`` and advances the turn.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, RemoveMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from memchat.backends.engine import Engine, shared_engine
from memchat.graph.memory_steps import (
    add_memory_nodes,
    finish,
    plan_prompt,
    to_messages,
    turn_messages,
    with_turn,
)
from memchat.memory.state import State
from memchat.nodes import should_summarize
from memchat.nodes.common import current_message
from memchat.settings import Settings, get_settings

__all__ = ["AgentMemoryState", "memory_graph", "prompt_messages", "remember_node"]


class AgentMemoryState(State, total=False):
    """memchat's thread state plus the turn's planned prompt (``prompt``) for your model node."""

    prompt: dict[str, Any]


def _bind(engine: Engine, fn: Any) -> Any:
    bound = partial(fn, engine=engine)
    bound.__name__ = fn.__name__  # type: ignore[attr-defined]
    return bound


def memory_graph(settings: Settings | None = None, *, engine: Engine | None = None) -> CompiledStateGraph:
    """The memory subgraph: add it as a node (``g.add_node("memory", memory_graph())``) before your model."""
    eng = engine or shared_engine(settings or get_settings())

    def plan(state: AgentMemoryState, config: RunnableConfig) -> dict[str, Any]:
        current_message(state)  # a turn needs a new user message
        return {"prompt": dict(plan_prompt(state, config, eng), human_id=current_message(state).id)}

    g = StateGraph(AgentMemoryState)
    add_memory_nodes(g, partial(_bind, eng),
                     lambda s: should_summarize(s, eng.settings), then="plan")
    g.add_node("plan", plan)
    g.add_edge("plan", END)
    return g.compile(name="memchat_memory")


def prompt_messages(state: AgentMemoryState, engine: Engine | None = None, system: str | None = None
                    ) -> list[BaseMessage]:
    """What to send the model now: the planned prompt + this turn's tool calls and results, in order."""
    eng = engine or shared_engine(get_settings())
    plan = state.get("prompt") or {}
    return with_turn(eng, to_messages(plan, system), turn_messages(state.get("messages") or [], plan.get("human_id")))


def remember_node(settings: Settings | None = None, *, engine: Engine | None = None) -> Any:
    """The node that ends a turn (after your model's final reply)."""
    eng = engine or shared_engine(settings or get_settings())

    def remember(state: AgentMemoryState, config: RunnableConfig, runtime: Runtime) -> dict[str, Any]:
        plan = state.get("prompt") or {}
        msgs: list[AnyMessage] = list(state.get("messages") or [])
        turn = turn_messages(msgs, plan.get("human_id"))
        reply = next((m for m in reversed(turn) if isinstance(m, AIMessage)), None)
        if reply is None:
            raise ValueError("remember needs the model's final reply as the last message")
        human = next(m for m in msgs if m.id == plan.get("human_id")) if plan.get("human_id") else None
        out = finish(state, config, eng, getattr(runtime, "store", None), plan, reply, turn[:-1],
                     human=human)  # type: ignore[arg-type]
        out["messages"] = [RemoveMessage(id=str(m.id)) for m in turn] + out["messages"]
        out["prompt"] = {}
        return out

    return remember
