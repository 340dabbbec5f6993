"""The durable outbox of vector-memory writes: a committed turn's memories reach the vector store even when it
was down when the turn was answered.

A turn's memories travel in its checkpoint (``outbox`` in the state, carried over from turn to turn while the
store keeps failing). A thread whose writes failed is also marked in the key-value store
(``("memchat", "outbox")``, key: the thread id), so any replica, or this one after a restart, replays it in the
background once the vector store answers again; ids are deterministic, so a replay never duplicates.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from memchat.backends.persistence import ThreadBusy
from memchat.backends.vectorstore import MemoryDoc
from memchat.memory.namespaces import search_all

OUTBOX_NS = ("memchat", "outbox")
MAX_BACKOFF = 10.0  # seconds between replay rounds while the vector store stays down
log = logging.getLogger("memchat.outbox")


class Outbox:
    """Threads with pending vector-memory writes, and the background replayer that writes them."""

    def __init__(self, store: Any, interval: float = 2.0) -> None:
        self.store = store
        self.interval = interval
        self._pending: dict[str, int] = {}  # thread id -> documents waiting
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._replay: Callable[[str], bool] | None = None
        self._load()

    def _load(self) -> None:
        if self.store is None:
            return
        try:
            items = list(search_all(self.store, OUTBOX_NS))
        except Exception:  # the store is down: the checkpoints still hold the writes
            log.warning("could not read the outbox marks", exc_info=True)
            return
        with self._guard:
            for it in items:
                self._pending.setdefault(it.key, int((it.value or {}).get("docs") or 0))

    def depth(self) -> int:
        """Vector-memory documents waiting to be written (as far as this process knows)."""
        with self._guard:
            return sum(self._pending.values())

    def threads(self) -> list[str]:
        """Threads with pending writes."""
        with self._guard:
            return list(self._pending)

    def mark(self, thread_id: str, docs: int) -> None:
        """``docs`` writes of the thread failed: remember it (durably when the store answers) and replay."""
        with self._guard:
            self._pending[thread_id] = docs
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.put(OUTBOX_NS, thread_id, {"docs": docs, "since": time.time()})
        self._ensure_running()

    def clear(self, thread_id: str) -> None:
        """The thread's writes are in the vector store."""
        with self._guard:
            known = self._pending.pop(thread_id, None) is not None
        if known and self.store is not None:
            with contextlib.suppress(Exception):
                self.store.delete(OUTBOX_NS, thread_id)

    def start(self, replay: Callable[[str], bool]) -> None:
        """Replay pending threads in the background with ``replay(thread_id) -> written``."""
        self._replay = replay
        if self._pending:
            self._ensure_running()

    def replay_now(self) -> int:
        """One round over the pending threads; returns how many are still pending."""
        if self._replay is None:
            return len(self.threads())
        self._load()  # marks left by other replicas or an earlier run
        for tid in self.threads():
            if self._stop.is_set():
                break
            try:
                done = self._replay(tid)
            except Exception:
                log.debug("outbox replay of %s failed", tid, exc_info=True)
                done = False
            if done:
                self.clear(tid)
        return len(self.threads())

    def _ensure_running(self) -> None:
        with self._guard:
            if self._replay is None or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._loop, name="memchat-outbox", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        delay = self.interval
        while not self._stop.wait(delay):
            with self._guard:
                if not self._pending:
                    self._thread = None
                    return
            left = self.replay_now()
            delay = min(delay * 1.5, MAX_BACKOFF) if left else self.interval

    def close(self) -> None:
        """Stop the replayer."""
        self._stop.set()


def write_outbox(engine: Any, outbox: Outbox, values: dict[str, Any], *, check: bool = False,
                 thread_id: str | None = None) -> bool:
    """Write a committed turn's vector memories (``values["outbox"]``; ids are idempotent; with ``check`` only
    those the store lacks); True when they are in the store. A failure is logged and counted, and the thread
    is marked: the outbox stays in the checkpoint (carried on by the next turns) and is replayed."""
    docs = [MemoryDoc(**d) for d in values.get("outbox") or []]
    if not docs:
        return True
    try:
        if check:
            have = {d.id for d in engine.memory.get_ids([d.id for d in docs])}
            docs = [d for d in docs if d.id not in have]
        if docs:
            engine.store_docs(docs)
    except Exception:
        engine.metrics.inc("memory_write_failures")
        log.warning("vector memory write failed; kept in the outbox and replayed", exc_info=True)
        if thread_id is not None:
            outbox.mark(thread_id, len(values.get("outbox") or []))
        return False
    if thread_id is not None:
        outbox.clear(thread_id)
    return True


def replay_thread(mc: Any, thread_id: str) -> bool:
    """Write a thread's pending outbox under its lock and lease (a :class:`memchat.chat.MemChat`); False while the
    thread is busy or the store is down; True for a thread deleted meanwhile."""
    lock = mc.lock(thread_id)
    if not lock.acquire(timeout=0.5):
        return False
    try:
        with mc.leases.hold(thread_id, wait=1.0):
            st = mc.state(thread_id)
            return not st or write_outbox(mc.engine, mc.outbox, st, check=True, thread_id=thread_id)
    except ThreadBusy:
        return False
    finally:
        lock.release()
