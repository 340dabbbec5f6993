"""Atomic turns in the graph itself, whoever drives it (``MemChat``, ``langgraph dev``, your own code with
your own checkpointer).

A turn that fails half-way (the LLM call raised, the process died) leaves its checkpoint at
``next=("respond",)`` with the user's message and its slot updates already in the state. Such a thread stays
resumable: ``graph.invoke(None, config)`` (or a ``Command``) runs what is left of the turn. A *new* message,
however, must not stack on a half turn: before running one, :class:`AtomicGraph` rolls the thread back to its
last complete turn (or deletes it when it has none), so the thread holds whole turns only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command

from memchat.memory.state import Context, State

SKIP = "rollback_checked"  # configurable flag: the caller (MemChat) has just rolled the thread back itself


def _thread(graph: Any, input: Any, config: RunnableConfig | None) -> str | None:
    """The thread to check before this run: a new input on a checkpointed thread (not a resume)."""
    conf = (config or {}).get("configurable") or {}
    if input is None or isinstance(input, Command) or not graph.checkpointer or conf.get(SKIP):
        return None
    tid = conf.get("thread_id")
    return str(tid) if tid else None


def _complete(snap: Any) -> bool:
    return not snap.next and bool(snap.metadata) and snap.metadata.get("step", -1) >= 0


def rollback_unfinished(graph: Any, config: RunnableConfig) -> bool:
    """Roll a thread left mid-turn back to its last complete turn (delete it when it has none); True when
    something was undone."""
    if not graph.get_state(config).next:
        return False
    for past in graph.get_state_history(config):
        if _complete(past):
            graph.update_state(past.config, None, as_node="__copy__")
            return True
    graph.checkpointer.delete_thread(config["configurable"]["thread_id"])
    return True


async def arollback_unfinished(graph: Any, config: RunnableConfig) -> bool:
    """:func:`rollback_unfinished` for async checkpointers."""
    if not (await graph.aget_state(config)).next:
        return False
    async for past in graph.aget_state_history(config):
        if _complete(past):
            await graph.aupdate_state(past.config, None, as_node="__copy__")
            return True
    await graph.checkpointer.adelete_thread(config["configurable"]["thread_id"])
    return True


class AtomicGraph(CompiledStateGraph[State, Context, State, State]):
    """The compiled memchat graph; every run with a new message starts from a whole turn (``invoke`` and
    ``ainvoke`` go through ``stream`` / ``astream``)."""

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:  # type: ignore[override]
        tid = _thread(self, input, config)
        if tid is not None:
            rollback_unfinished(self, {"configurable": {**(config or {}).get("configurable", {}), "thread_id": tid}})
        yield from super().stream(input, config, **kwargs)

    async def astream(self, input: Any, config: RunnableConfig | None = None,  # type: ignore[override]
                      **kwargs: Any) -> AsyncIterator[Any]:
        tid = _thread(self, input, config)
        if tid is not None:
            await arollback_unfinished(self, {"configurable": {**(config or {}).get("configurable", {}),
                                                               "thread_id": tid}})
        async for item in super().astream(input, config, **kwargs):
            yield item
