"""A thread-safe facade over the compiled graph: atomic turns, memory views, forgetting.

Turns run with ``durability="exit"``: the checkpoint is written once, when the turn ends. A failed
turn is rolled back to the checkpoint it started from, and a turn cut short by a crash left nothing
behind, so a thread holds a whole turn or none of it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig

from graph.builder import build_graph
from graph.engine import Engine, get_engine
from graph.persistence import ThreadLeases
from graph.settings import Settings
from nodes.common import completed_pairs, l0_turns, text_of
from nodes.summarize import schedule_next, summarize_l2
from nodes.update_slots import audit_namespace, head_snapshot, profile_namespace

THREADS_NS = ("memchat", "threads")


@dataclass
class TurnResult:
    """What one turn produced."""

    thread_id: str
    turn: int
    reply: str
    usage: dict[str, Any] = field(default_factory=dict)
    cached_tokens: int | None = None
    context: dict[str, Any] = field(default_factory=dict)


class MemChat:
    """Runs turns on threads with a checkpointer and a store (SQLite or PostgreSQL by settings)."""

    def __init__(self, settings: Settings | None = None, *, engine: Engine | None = None,
                 checkpointer: Any = True, store: Any = True) -> None:
        self.engine = engine or get_engine(settings)
        self.settings = self.engine.settings
        self.graph = build_graph(checkpointer=checkpointer, store=store, engine=self.engine)
        self.checkpointer = self.graph.checkpointer
        self.store = self.graph.store
        self.leases = ThreadLeases(self.settings)  # one turn per thread across processes / replicas
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # ---- config & locks ------------------------------------------------------------------
    def config(self, thread_id: str, user_id: str | None = None, llm_params: dict[str, Any] | None = None,
               context: str | None = None) -> RunnableConfig:
        conf: dict[str, Any] = {"thread_id": thread_id}
        if user_id:
            conf["user_id"] = user_id
        if llm_params:
            conf["llm_params"] = llm_params
        if context:
            conf["request_context"] = context  # this request only: rendered in the tail, never stored
        if self.settings.background_summaries:
            conf["background_summaries"] = True  # the summarize node applies summaries made after the last reply
        return {"configurable": conf, "recursion_limit": 25}

    def lock(self, thread_id: str) -> threading.Lock:
        """The in-process lock of a thread."""
        with self._locks_guard:
            return self._locks.setdefault(thread_id, threading.Lock())

    @contextlib.contextmanager
    def exclusive(self, thread_id: str) -> Iterator[None]:
        """Hold a thread: the in-process lock, then the cross-process lease (raises ``ThreadBusy``)."""
        with self.lock(thread_id), self.leases.hold(thread_id):
            yield

    # ---- turns ------------------------------------------------------------------------------
    def recover(self, thread_id: str) -> bool:
        """Roll back a half-finished turn (e.g. after a crash); True when something was undone."""
        cfg = self.config(thread_id)
        snap = self.graph.get_state(cfg)
        if not snap.next:
            return False
        for past in self.graph.get_state_history(cfg):
            if not past.next and past.metadata and past.metadata.get("step", -1) >= 0:
                self.graph.update_state(past.config, None, as_node="__copy__")
                return True
        self.checkpointer.delete_thread(thread_id)  # type: ignore[union-attr]
        return True

    def stream_turn(self, thread_id: str, message: str, *, user_id: str | None = None, persona: str | None = None,
                    llm_params: dict[str, Any] | None = None, context: str | None = None
                    ) -> Iterator[str | TurnResult]:
        """Yield reply tokens as they stream, then the :class:`TurnResult` (``context``: text for this
        turn's prompt tail only)."""
        if not isinstance(message, str) or not message.strip():
            raise ValueError("message must be a non-empty string")
        with self.exclusive(thread_id):
            self.recover(thread_id)
            cfg = self.config(thread_id, user_id, llm_params, context)
            pre = self.graph.get_state(cfg)
            turn = int((pre.values or {}).get("turn") or 0) + 1
            inp: dict[str, Any] = {"messages": [HumanMessage(content=message, id=f"user:{thread_id}:{turn}")]}
            if persona is not None:
                inp["persona"] = persona
            if user_id:
                inp["user_id"] = user_id
            final: dict[str, Any] = {}
            try:
                for mode, data in self.graph.stream(inp, cfg, stream_mode=["messages", "values"],
                                                    durability="exit"):
                    if mode == "messages":
                        chunk, meta = data  # type: ignore[misc,str-unpack]
                        if meta.get("langgraph_node") == "respond" and "memchat:respond" in (meta.get("tags") or []):  # type: ignore[union-attr]
                            text = text_of(chunk)  # type: ignore[arg-type]
                            if text:
                                yield text
                    elif mode == "values":
                        final = data  # type: ignore[assignment]
            except BaseException:
                self._rollback(thread_id, pre)
                raise
            if int(final.get("turn") or 0) != turn:
                self._rollback(thread_id, pre)
                raise RuntimeError("the turn did not complete")
            self._register(thread_id, final.get("user_id") or user_id or "anonymous", turn)
            if self.settings.background_summaries:  # the next compaction's summaries, off the hot path
                schedule_next(self.engine, thread_id, final)
            ctx = dict(final.get("context") or {})
            reply = text_of(final["messages"][-1])
            yield TurnResult(thread_id=thread_id, turn=turn, reply=reply, usage=dict(ctx.get("usage") or {}),
                             cached_tokens=ctx.get("cached_tokens"), context=ctx)

    def turn(self, thread_id: str, message: str, *, on_token: Callable[[str], None] | None = None,
             **kw: Any) -> TurnResult:
        """Run one turn; ``on_token`` gets reply tokens as they stream."""
        result: TurnResult | None = None
        for item in self.stream_turn(thread_id, message, **kw):
            if isinstance(item, TurnResult):
                result = item
            elif on_token is not None:
                on_token(item)
        assert result is not None
        return result

    def _rollback(self, thread_id: str, pre: Any) -> None:
        if pre.config and pre.config.get("configurable", {}).get("checkpoint_id") and pre.values:
            self.graph.update_state(pre.config, None, as_node="__copy__")
        else:
            self.checkpointer.delete_thread(thread_id)  # type: ignore[union-attr]

    def _register(self, thread_id: str, user_id: str, turns: int) -> None:
        if self.store is not None:
            self.store.put(THREADS_NS, thread_id, {"user_id": user_id, "turns": turns, "updated": time.time()})

    # ---- views ------------------------------------------------------------------------------
    def state(self, thread_id: str) -> dict[str, Any]:
        """The thread's current state values (empty for an unknown thread)."""
        return dict(self.graph.get_state(self.config(thread_id)).values or {})

    def memory(self, thread_id: str) -> dict[str, Any]:
        """Slots with provenance, L1, L2, recent turns, completed turns and last retrievals."""
        st = self.state(thread_id)
        return {
            "thread_id": thread_id,
            "user_id": st.get("user_id"),
            "turns": int(st.get("turn") or 0),
            "persona": st.get("persona"),
            "slots": [dict(v, key=k) for k, v in sorted((st.get("slots") or {}).items())],
            "l1": list(st.get("l1") or []),
            "l2": st.get("l2"),
            "recent_turns": [{"turn": t.turn, "user": t.user, "assistant": t.assistant} for t in l0_turns(st)]
            if st else [],
            "retrieved": list(st.get("retrieved") or []),
            "counters": dict(st.get("counters") or {}),
        }

    def context(self, thread_id: str) -> dict[str, Any]:
        """The last prompt sent to the LLM with token counts per section."""
        ctx = dict(self.state(thread_id).get("context") or {})
        ctx["thread_id"] = thread_id
        ctx.setdefault("messages", [])
        ctx.setdefault("sections", {})
        return ctx

    def threads(self) -> list[dict[str, Any]]:
        """Known threads, most recent first."""
        if self.store is None:
            return []
        items = self.store.search(THREADS_NS, limit=1000)
        rows = [{"id": it.key, **it.value} for it in items]
        return sorted(rows, key=lambda r: -float(r.get("updated", 0)))

    def audit(self, *, thread_id: str | None = None, user_id: str | None = None) -> list[dict[str, Any]]:
        """Slot audit history: a thread's (from its state) or a user's (across threads)."""
        if user_id is not None and self.store is not None:
            rows = [it.value for it in self.store.search(audit_namespace(user_id), limit=10000)]
            if thread_id is not None:
                rows = [r for r in rows if r.get("thread_id") == thread_id]
            return sorted(rows, key=lambda r: (r.get("time", 0), r.get("turn", 0)))
        if thread_id is None:
            raise ValueError("give a thread_id or a user_id")
        return list(self.state(thread_id).get("slot_log") or [])

    # ---- on-demand L2, forgetting -------------------------------------------------------
    def summarize_now(self, thread_id: str) -> dict[str, Any]:
        """Fold all L1 lines (and verbatim turns beyond the newest N) into L2 now."""
        with self.exclusive(thread_id):
            self.recover(thread_id)
            cfg = self.config(thread_id)
            st = self.state(thread_id)
            if not st:
                raise KeyError(thread_id)
            lines = list(st.get("l1") or [])
            turns = l0_turns(st)
            n = self.settings.l0_turns
            older = turns[:-n] if len(turns) > n else []
            if older:
                lines.append({"from_turn": older[0].turn, "to_turn": older[-1].turn,
                              "text": " / ".join(f"user: {t.user} — assistant: {t.assistant}" for t in older)[:2000]})
            if not lines:
                lines = [{"from_turn": t.turn, "to_turn": t.turn, "text": f"user: {t.user} — assistant: {t.assistant}"}
                         for t in turns]
            if not lines:
                return self.memory(thread_id)
            new_l2 = summarize_l2(self.engine, st.get("l2"), lines)
            if new_l2 is None:
                raise RuntimeError("the LLM could not produce the L2 summary; try again")
            persona = (st.get("head") or {}).get("persona") or st.get("persona") or self.settings.persona
            update: dict[str, Any] = {"l2": new_l2, "l1": [], "head": head_snapshot(persona, st.get("slots") or {}, new_l2),
                                      "counters": {"llm_calls_summary": 1}}
            if older:
                pairs = completed_pairs(st)[: len(older)]
                from langchain_core.messages import RemoveMessage

                update["messages"] = [RemoveMessage(id=str(m.id)) for p in pairs for m in p]
                keep = {t.turn for t in turns[len(older):]}
                update["l0_meta"] = [m for m in st.get("l0_meta") or [] if int(m.get("turn", 0)) in keep]
            self.graph.update_state(cfg, update, as_node="respond")
        return self.memory(thread_id)

    def delete_thread(self, thread_id: str) -> dict[str, Any]:
        """Forget a thread: its checkpoints and thread-scoped memories."""
        with self.exclusive(thread_id):
            st = self.state(thread_id)
            self.checkpointer.delete_thread(thread_id)  # type: ignore[union-attr]
            removed = self.engine.memory.delete_thread(thread_id)
            if self.store is not None:
                self.store.delete(THREADS_NS, thread_id)
        return {"thread_id": thread_id, "deleted": bool(st), "memories_removed": removed}

    def delete_user(self, user_id: str) -> dict[str, Any]:
        """Forget a user everywhere: their threads, memories, profile and audit log."""
        threads = [t["id"] for t in self.threads() if t.get("user_id") == user_id]
        for tid in threads:
            self.delete_thread(tid)
        removed = self.engine.memory.delete_user(user_id)
        if self.store is not None:
            for ns in (profile_namespace(user_id), audit_namespace(user_id)):
                for it in self.store.search(ns, limit=100000):
                    self.store.delete(ns, it.key)
        return {"user_id": user_id, "threads_deleted": threads, "memories_removed": removed}


def last_reply(state: dict[str, Any]) -> str:
    """Text of the last assistant message in a state."""
    for m in reversed(state.get("messages") or []):
        if isinstance(m, AIMessage):
            return text_of(m)
    return ""
