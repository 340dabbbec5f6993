"""The inspector's views of a thread's last turn, kept out of the checkpoint history.

The last prompt (every message sent to the LLM), the reply and the last retrievals are what the memory
inspector shows (``/v1/threads/{id}/context`` and ``/memory``) and what the next turn compares its prompt
with (prefix reuse). They are large (~15 K characters) and only the latest matters, so they live in one
store entry per thread (``("memchat", "last-turn")``, key = thread id), overwritten after each committed
turn, instead of in every checkpoint. The store is the one the replicas share (SQLite or PostgreSQL); an
in-process cache of recent threads saves the read on the next turn of a thread served here.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

LAST_TURN_NS = ("memchat", "last-turn")  # thread id → {"turn", "context", "retrieved"}
log = logging.getLogger("memchat.views")


class TurnViews:
    """Last-turn views per thread: the store entry plus a bounded in-process cache."""

    def __init__(self, store: Any, cache_size: int = 512) -> None:
        self.store = store
        self.cache_size = cache_size
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._guard = threading.Lock()

    def save(self, thread_id: str, view: dict[str, Any]) -> None:
        """Store a committed turn's view (a failure is logged: the views are for inspection only)."""
        self._remember(thread_id, view)
        if self.store is None:
            return
        try:
            self.store.put(LAST_TURN_NS, thread_id, view, index=False)
        except Exception:  # noqa: BLE001 - the turn is committed; its view is not worth failing it
            log.warning("could not store the last-turn view of a thread", exc_info=True)

    def load(self, thread_id: str, turn: int | None = None) -> dict[str, Any] | None:
        """The view of the thread's last turn (of ``turn`` exactly, when given), or None."""
        with self._guard:
            view = self._cache.get(thread_id)
        if view is not None and (turn is None or view.get("turn") == turn):
            return view
        if self.store is None:
            return None
        try:
            item = self.store.get(LAST_TURN_NS, thread_id)
        except Exception:  # noqa: BLE001
            log.warning("could not read the last-turn view of a thread", exc_info=True)
            return None
        view = dict(item.value) if item is not None else None
        if view is None or (turn is not None and view.get("turn") != turn):
            return None
        self._remember(thread_id, view)
        return view

    def drop(self, thread_id: str) -> None:
        """Forget a thread's view (the thread is deleted)."""
        with self._guard:
            self._cache.pop(thread_id, None)
        if self.store is not None:
            self.store.delete(LAST_TURN_NS, thread_id)

    def _remember(self, thread_id: str, view: dict[str, Any]) -> None:
        with self._guard:
            self._cache[thread_id] = view
            self._cache.move_to_end(thread_id)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
