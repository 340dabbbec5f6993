"""A thread-safe facade over the compiled graph: atomic turns, memory views, forgetting.

Turns run with ``durability="exit"``: the checkpoint is written once, when the turn ends. A failed
turn is rolled back to the checkpoint it started from, and a turn cut short by a crash left nothing
behind, so a thread holds a whole turn or none of it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig

from memchat.backends import deadline
from memchat.backends.checkpoint_prune import prune
from memchat.backends.engine import Engine, shared_engine
from memchat.backends.extraction import schedule as schedule_extraction
from memchat.backends.outbox import Outbox, replay_thread, write_outbox
from memchat.backends.persistence import ThreadBusy, ThreadLeases
from memchat.backends.registry import ThreadRegistry, legacy_user
from memchat.backends.views import TurnViews
from memchat.forgetting import drop_thread, forget_user
from memchat.graph.atomic import SKIP, rollback_unfinished
from memchat.graph.builder import build_graph
from memchat.memory.namespaces import THREADS_NS, audit_namespace, search_all
from memchat.memory.receipts import find_receipt, fingerprint, key_hash
from memchat.memory.state import Context, current_values
from memchat.nodes.common import l0_turns, text_of
from memchat.nodes.summarize import fold_all, schedule_next
from memchat.settings import Settings, get_settings

__all__ = ["THREADS_NS", "MemChat", "TurnResult", "last_reply"]
log = logging.getLogger("memchat.chat")


@dataclass
class TurnResult:
    """What one turn produced."""

    thread_id: str
    turn: int
    reply: str
    usage: dict[str, Any] = field(default_factory=dict)
    cached_tokens: int | None = None
    context: dict[str, Any] = field(default_factory=dict)
    receipt: dict[str, Any] = field(default_factory=dict)  # what the caller stored with an idempotency key
    replayed: bool = False  # the stored result of an earlier turn with the same idempotency key


class MemChat:
    """Runs turns on threads with a checkpointer and a store (SQLite or PostgreSQL by settings)."""

    def __init__(self, settings: Settings | None = None, *, engine: Engine | None = None,
                 checkpointer: Any = True, store: Any = True) -> None:
        self.engine = engine or shared_engine(settings or get_settings())
        self.settings = self.engine.settings
        self.graph = build_graph(checkpointer=checkpointer, store=store, engine=self.engine)
        self.checkpointer = self.graph.checkpointer
        self.store = self.graph.store
        self.leases = ThreadLeases(self.settings)  # one turn per thread across processes / replicas
        self.registry = ThreadRegistry(self.store)  # threads, their speakers, users being forgotten
        self.views = TurnViews(self.store)  # the last prompt and retrievals per thread, outside the checkpoints
        # held only while someone holds or waits on the lock, so the table does not grow with every thread ever seen
        self._locks: weakref.WeakValueDictionary[str, threading.Lock] = weakref.WeakValueDictionary()
        self._locks_guard = threading.Lock()
        self.outbox = Outbox(self.store)  # threads whose vector-memory writes wait for the store to return
        self.outbox.start(self._replay_outbox)

    # ---- config & locks ------------------------------------------------------------------
    def config(self, thread_id: str) -> RunnableConfig:
        """The run config: the thread and MemChat's own switches (per-run values go in :meth:`run_context`)."""
        # SKIP: MemChat rolls a half turn back itself (recover, under the thread's lock) before each turn
        conf: dict[str, Any] = {"thread_id": thread_id, "defer_memory": True, "views_out": True, SKIP: True}
        if self.settings.summaries_in_background:
            conf["background_summaries"] = True  # the summarize node applies summaries made after the last reply
        return {"configurable": conf, "recursion_limit": 25}

    @staticmethod
    def run_context(user_id: str | None = None, llm_params: dict[str, Any] | None = None,
                    context: str | None = None) -> Context:
        """The LangGraph run context of a turn (``context_schema``): user, generation parameters, and text for
        this request only (rendered in the prompt's tail, never stored)."""
        ctx: Context = {}
        if user_id:
            ctx["user_id"] = user_id
        if llm_params:
            ctx["llm_params"] = llm_params
        if context:
            ctx["request_context"] = context
        return ctx

    def lock(self, thread_id: str) -> threading.Lock:
        """The in-process lock of a thread (the same object for every caller while any caller still holds it)."""
        with self._locks_guard:
            lock = self._locks.get(thread_id)
            if lock is None:
                lock = self._locks[thread_id] = threading.Lock()
            return lock

    @contextlib.contextmanager
    def exclusive(self, thread_id: str) -> Iterator[None]:
        """Hold a thread: the in-process lock, then the cross-process lease; raises ``ThreadBusy`` when the
        thread stays busy for ``MEMCHAT_THREAD_WAIT`` seconds."""
        wait = self.settings.thread_wait
        left = deadline.remaining()  # a turn under MEMCHAT_TURN_TIMEOUT waits no longer than it has left
        cut = left is not None and left < wait
        wait = min(wait, left) if left is not None else wait
        until = time.monotonic() + wait
        lock = self.lock(thread_id)
        if not lock.acquire(timeout=wait):
            if cut:
                raise deadline.TurnTimeout(self.settings.turn_timeout)
            raise ThreadBusy(f"thread {thread_id!r} is busy with another turn (waited {wait:g}s, "
                             "MEMCHAT_THREAD_WAIT)")
        try:
            with self.leases.hold(thread_id, wait=max(0.0, until - time.monotonic())):
                yield
        except ThreadBusy:
            if cut:
                raise deadline.TurnTimeout(self.settings.turn_timeout) from None
            raise
        finally:
            lock.release()

    # ---- turns ------------------------------------------------------------------------------
    def recover(self, thread_id: str) -> bool:
        """Roll back a half-finished turn (e.g. after a crash); True when something was undone."""
        return rollback_unfinished(self.graph, self.config(thread_id))

    def stream_turn(self, thread_id: str, message: str, *, user_id: str | None = None, persona: str | None = None,
                    llm_params: dict[str, Any] | None = None, idempotency_key: str | None = None,
                    receipt: dict[str, Any] | None = None, context: str | None = None
                    ) -> Iterator[str | TurnResult]:
        """Yield reply tokens as they stream, then the :class:`TurnResult` (``context``: text for this
        turn's prompt tail only).

        With ``idempotency_key``, a request repeated on the thread with the same key gets the stored result
        (``replayed``, with the ``receipt`` stored by the first) instead of a second turn; the same key with a
        different request raises :class:`memchat.memory.receipts.IdempotencyConflict`."""
        if not isinstance(message, str) or not message.strip():
            raise ValueError("message must be a non-empty string")
        with deadline.started(self.settings.turn_timeout) as until, self.exclusive(thread_id):
            cfg = self.config(thread_id)
            pre = self.graph.get_state(cfg)
            if pre.next and self.recover(thread_id):  # a half turn (a crash): rolled back first
                pre = self.graph.get_state(cfg)
            seen = self.registry.admit(thread_id, user_id or legacy_user((pre.values or {}).get("user_id")))
            if not self._flush(pre.values or {}, check=True, thread_id=thread_id):  # still not written:
                cfg["configurable"]["outbox_carry"] = True  # this turn's checkpoint carries them on
            if idempotency_key:
                fp = fingerprint(user=user_id, message=message, persona=persona, llm_params=llm_params or {})
                done = find_receipt((pre.values or {}).get("receipts"), idempotency_key, fp)
                if done is not None:
                    yield _replay(thread_id, done)
                    return
                cfg["configurable"]["receipt"] = {**(receipt or {}), "key": key_hash(idempotency_key),
                                                  "fingerprint": fp}
            turn = int((pre.values or {}).get("turn") or 0) + 1
            last = self.views.load(thread_id, turn - 1)
            if last:
                cfg["configurable"]["prev_context"] = last.get("context")
            inp: dict[str, Any] = {"messages": [HumanMessage(content=message, id=f"user:{thread_id}:{turn}")]}
            if persona is not None:
                inp["persona"] = persona
            if user_id:
                inp["user_id"] = user_id
            out: dict[str, Any] = {"final": {}, "view": {}}
            try:
                yield from _reply_tokens(self.graph.stream(inp, cfg, stream_mode=["messages", "values", "custom"],  # type: ignore[call-overload]
                                                           durability="exit",
                                                           context=self.run_context(user_id, llm_params, context)),
                                         out)
                final, view = out["final"], out["view"]
                if int(final.get("turn") or 0) != turn:
                    raise RuntimeError("the turn did not complete")
                if until is not None and time.monotonic() > until:  # the client was told 504: undo it
                    raise deadline.TurnTimeout(self.settings.turn_timeout)
                self.registry.record(thread_id, final.get("user_id"), turn, seen)
            except BaseException:
                self._rollback(thread_id, pre)
                raise
            self._flush(final, thread_id=thread_id)  # vector memory last: nothing after it can fail the turn
            self._after_commit(thread_id, view)
            ctx = dict(view.get("context") or final.get("last_prompt") or {})
            if self.settings.summaries_in_background:  # the next compaction's summaries, off the hot path
                schedule_next(self.engine, thread_id, final)
            schedule_extraction(self.engine, thread_id, {**final, "last_prompt": ctx})  # LLM slot tier, next turn
            reply = text_of(final["messages"][-1])
            yield TurnResult(thread_id=thread_id, turn=turn, reply=reply, usage=dict(ctx.get("usage") or {}),
                             cached_tokens=ctx.get("cached_tokens"), context=ctx, receipt=dict(receipt or {}))

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

    def _after_commit(self, thread_id: str, view: dict[str, Any]) -> None:
        """Keep the turn's view (last prompt, retrievals) and prune the thread's checkpoint history to the last
        ``MEMCHAT_CHECKPOINT_KEEP``; neither can fail the committed turn."""
        if view:
            self.views.save(thread_id, view)
        try:
            prune(self.checkpointer, thread_id, self.settings.checkpoint_keep)
        except Exception:
            log.warning("pruning the checkpoint history failed; retried after the thread's next turn", exc_info=True)

    def _rollback(self, thread_id: str, pre: Any) -> None:
        if pre.config and pre.config.get("configurable", {}).get("checkpoint_id") and pre.values:
            self.graph.update_state(pre.config, None, as_node="__copy__")
        else:
            self.checkpointer.delete_thread(thread_id)  # type: ignore[union-attr]

    def _flush(self, values: dict[str, Any], check: bool = False, thread_id: str | None = None) -> bool:
        """Write a committed turn's vector memories (its ``outbox``); True when they are in the store (see
        :func:`memchat.backends.outbox.write`)."""
        return write_outbox(self.engine, self.outbox, values, check=check, thread_id=thread_id)

    def _replay_outbox(self, thread_id: str) -> bool:
        """Write a thread's pending outbox (background); False while the thread is busy or the store down."""
        return replay_thread(self, thread_id)

    # ---- views ------------------------------------------------------------------------------
    def state(self, thread_id: str) -> dict[str, Any]:
        """The thread's current state values (empty for an unknown thread)."""
        return current_values(self.graph.get_state(self.config(thread_id)).values or {})

    def memory(self, thread_id: str) -> dict[str, Any]:
        """Slots with provenance, L1, L2, recent turns, completed turns and last retrievals."""
        st = self.state(thread_id)
        return {
            "thread_id": thread_id,
            "user_id": st.get("user_id"),
            "turns": int(st.get("turn") or 0),
            "persona": st.get("persona"),
            "slots": [dict(v, key=k) for k, v in sorted((st.get("slots") or {}).items())],
            "slot_history": [{k: e.get(k) for k in ("action", "key", "old", "new", "turn", "why") if k in e}
                             for e in (st.get("slot_log") or [])[-20:]],
            "l1": list(st.get("l1") or []),
            "l2": st.get("l2"),
            "recent_turns": [{"turn": t.turn, "user": t.user, "assistant": t.assistant} for t in l0_turns(st)]
            if st else [],
            "retrieved": list(self._view(thread_id, st).get("retrieved") or st.get("retrieved") or []),
            "counters": dict(st.get("counters") or {}),
        }

    def context(self, thread_id: str) -> dict[str, Any]:
        """The last prompt sent to the LLM with token counts per section."""
        st = self.state(thread_id)
        ctx = dict(self._view(thread_id, st).get("context") or st.get("last_prompt") or {})
        ctx["thread_id"] = thread_id
        ctx.setdefault("messages", [])
        ctx.setdefault("sections", {})
        return ctx

    def _view(self, thread_id: str, st: dict[str, Any]) -> dict[str, Any]:
        """The last-turn view that belongs to the thread's current turn ({} when none does)."""
        return (self.views.load(thread_id, int(st.get("turn") or 0)) or {}) if st else {}

    def threads(self, user_id: str | None = None) -> list[dict[str, Any]]:
        """Known threads (all, or every thread ``user_id`` spoke in), most recent first."""
        return self.registry.rows(user_id)

    def audit(self, *, thread_id: str | None = None, user_id: str | None = None) -> list[dict[str, Any]]:
        """Slot audit history: a thread's (from its state) or a user's (across threads)."""
        if user_id is not None and self.store is not None:
            rows = [it.value for it in search_all(self.store, audit_namespace(user_id))]
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
            update = fold_all(self.engine, st, self.settings.persona)
            if update is None:
                return self.memory(thread_id)
            self.graph.update_state(cfg, update, as_node="respond")
        return self.memory(thread_id)

    def delete_thread(self, thread_id: str) -> dict[str, Any]:
        """Forget a thread: its checkpoints, thread-scoped memories and, when it had no user, its own
        profile slots and facts."""
        with self.exclusive(thread_id):
            return drop_thread(self, thread_id, self.state(thread_id), self.registry.row(thread_id))

    def delete_user(self, user_id: str) -> dict[str, Any]:
        """Forget a user everywhere (:func:`memchat.forgetting.forget_user`)."""
        return forget_user(self, user_id)


def _reply_tokens(stream: Iterator[Any], out: dict[str, Any]) -> Iterator[str]:
    """The reply's tokens from a turn's graph stream; ``out`` gets the final state and the turn's view."""
    for mode, data in stream:
        if mode == "messages":
            chunk, meta = data
            if meta.get("langgraph_node") == "respond" and "memchat:respond" in (meta.get("tags") or []):
                text = text_of(chunk)
                if text:
                    yield text
        elif mode == "values":
            out["final"] = data
        elif mode == "custom" and isinstance(data, dict) and "memchat_view" in data:
            out["view"] = data["memchat_view"]


def _replay(thread_id: str, rec: dict[str, Any]) -> TurnResult:
    """The stored result of a turn (from its idempotency receipt)."""
    meta = {k: v for k, v in rec.items() if k not in ("reply", "turn", "usage", "cached_tokens", "context")}
    return TurnResult(thread_id=thread_id, turn=int(rec.get("turn") or 0), reply=str(rec.get("reply") or ""),
                      usage=dict(rec.get("usage") or {}), cached_tokens=rec.get("cached_tokens"),
                      context=dict(rec.get("context") or {}), receipt=meta, replayed=True)


def last_reply(state: dict[str, Any]) -> str:
    """Text of the last assistant message in a state."""
    for m in reversed(state.get("messages") or []):
        if isinstance(m, AIMessage):
            return text_of(m)
    return ""
