"""Summaries off the hot path: the next compaction's summaries, computed after the previous reply.

After a turn whose state means the next turn compacts (L0 reached 2×N, or L1 is due for L2),
:func:`memchat.nodes.summarize.schedule_next` starts the summary calls in a background worker. The ``summarize`` node of the
next turn then applies the result instead of calling the LLM before the reply. The node order stays.

Results are keyed by a hash of exactly what they summarize (thread, turns and texts; for L2 the L2 so
far and the L1 lines taken), so a result is applied only while it still matches the thread's state:
after a rollback, an edit or another replica's turn the key differs and the result is simply not used.
Nothing here is checkpointed: a crash loses at most the pending results, which are computed again.
When a result is still being computed, the node defers the compaction by a turn (L0 may hold up to
3×N−1 turns meanwhile, within the same hard prompt budget) rather than wait; beyond that it waits.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from memchat.memory.prompt import Turn

log = logging.getLogger("memchat.summarize")

PENDING = object()  # a result still being computed
MISSING = object()  # no result known and none on its way
MAX_RESULTS = 4096


def l1_key(thread_id: str, fold: list[Turn]) -> str:
    """Key of the L1 line for a block of turns of a thread."""
    return _hash(["l1", thread_id, [(t.turn, t.user, t.assistant) for t in fold]])


def l2_key(thread_id: str, l2: Mapping[str, Any] | None, take: list[dict[str, Any]]) -> str:
    """Key of the L2 summary made from ``l2`` and the L1 lines ``take``."""
    return _hash(["l2", thread_id, l2 or {}, [(b["from_turn"], b["to_turn"], b["text"]) for b in take]])


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, ensure_ascii=False, sort_keys=True, default=str).encode()).hexdigest()


class SummaryCache:
    """Background summary jobs of one engine and their results (bounded, in process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: OrderedDict[str, Any] = OrderedDict()
        self._running: dict[str, Future[Any]] = {}
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="memchat-summary")

    def submit(self, key: str, fn: Callable[[], Any]) -> None:
        """Run ``fn`` in the background unless its result is known or on its way."""
        with self._lock:
            if key in self._done or key in self._running:
                return
            ctx = contextvars.copy_context()  # logs of the job carry the id of the request that started it
            self._running[key] = self._pool.submit(ctx.run, self._run, key, fn)

    def _run(self, key: str, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except Exception:  # a bug, not a failed summary (those fall back inside fn): compute inline later
            log.exception("background summary failed")
            with self._lock:
                self._running.pop(key, None)
            raise
        with self._lock:
            self._done[key] = result
            self._running.pop(key, None)
            while len(self._done) > MAX_RESULTS:
                self._done.popitem(last=False)
        return result

    def get(self, key: str, wait: float = 0.0, keep: bool = False) -> Any:
        """The result (taken out of the cache unless ``keep``), :data:`PENDING` while running (after waiting up
        to ``wait`` seconds), :data:`MISSING` when unknown."""
        with self._lock:
            if key in self._done:
                return self._done[key] if keep else self._done.pop(key)
            fut = self._running.get(key)
        if fut is None:
            return MISSING
        if wait <= 0:
            return PENDING
        try:
            fut.result(timeout=wait)
        except Exception:
            return MISSING
        with self._lock:
            return self._done.get(key, MISSING) if keep else self._done.pop(key, MISSING)

    def drain(self, timeout: float = 30.0) -> None:
        """Wait for the running jobs (tests, benches, shutdown)."""
        with self._lock:
            futs = list(self._running.values())
        for f in futs:
            try:
                f.result(timeout=timeout)
            except Exception:
                pass


_caches: weakref.WeakKeyDictionary[Any, SummaryCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def cache_for(engine: Any) -> SummaryCache:
    """The summary cache of an engine."""
    with _caches_lock:
        cache = _caches.get(engine)
        if cache is None:
            cache = _caches[engine] = SummaryCache()
        return cache
