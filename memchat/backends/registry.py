"""Which threads exist and who spoke in them, and the marks that keep a user's turns out while the user
is being forgotten.

Rows: ``("memchat", "threads")`` thread id → ``{"user_id": last speaker, "users": every speaker, "turns",
"updated"}``, written when a turn completes. Index: ``("memchat", "user-threads", <user>)`` thread id →
``{}``, written when a turn of the user is admitted (before it runs), so that a forget that starts while
the turn runs finds its thread. An index entry without a row naming the user is stale and ignored.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from langgraph.store.base import GetOp, PutOp

from memchat.backends.persistence import ThreadBusy
from memchat.memory.namespaces import (
    FORGETTING_NS,
    LEGACY_ANONYMOUS,
    META_NS,
    THREADS_NS,
    audit_namespace,
    keys_in,
    profile_namespace,
    public_user,
    search_all,
    user_threads_namespace,
)

INDEX_VERSION = 2  # rows before version 2 named only the last speaker and had no user index


class UserForgetting(ThreadBusy):
    """A turn of a user whose memory is being forgotten (answered 409; retry after the forget)."""


def speakers(row: dict[str, Any] | None) -> list[str]:
    """Every user who spoke in a thread, from its registry row."""
    if not row:
        return []
    users = [u for u in row.get("users") or [] if u]
    last = row.get("user_id")
    if last and last not in users:
        users.append(last)
    return users


@dataclass(frozen=True)
class Seen:
    """A thread's registry row as :meth:`ThreadRegistry.admit` read it (``None``: no row yet)."""

    row: dict[str, Any] | None


class ThreadRegistry:
    """The registry over a LangGraph store (every method is a no-op without a store)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        if store is not None:
            self._index_legacy_rows()

    def _index_legacy_rows(self) -> None:
        """Index the rows written before the user index existed (once per store)."""
        mark = self.store.get(META_NS, "registry")
        if mark is not None and int(mark.value.get("version", 0)) >= INDEX_VERSION:
            return
        puts = [PutOp(user_threads_namespace(user), it.key, {})
                for it in search_all(self.store, THREADS_NS) for user in speakers(it.value)]
        self.store.batch([*puts, PutOp(META_NS, "registry", {"version": INDEX_VERSION})])

    # ---- turns --------------------------------------------------------------------------------
    def admit(self, thread_id: str, user: str | None) -> Seen | None:
        """Before a turn of ``user`` runs: index the thread under the user, then refuse the turn while the
        user is being forgotten (in this order, so that a forget either sees the thread or stops the turn).
        Returns the thread's row as read in the same store call (for :meth:`record`), when it read it."""
        if self.store is None or not public_user(user):
            return None
        assert user is not None
        index = user_threads_namespace(user)
        known, mark, row = self.store.batch([GetOp(index, thread_id), GetOp(FORGETTING_NS, user),
                                             GetOp(THREADS_NS, thread_id)])
        if known is None:
            self.store.put(index, thread_id, {})
            mark = self.store.get(FORGETTING_NS, user)
        if mark is not None and float(mark.value.get("until", 0)) > time.time():
            raise UserForgetting(f"the memory of user {user!r} is being forgotten")
        return Seen(dict(row.value) if row is not None else None)

    def record(self, thread_id: str, user: str | None, turns: int, seen: Seen | None = None) -> None:
        """After a completed turn: the thread's last speaker, every speaker and its turn count (``seen``: the row
        :meth:`admit` read for this turn; the turn holds the thread, so nothing else wrote it since)."""
        if self.store is None:
            return
        user = public_user(user)
        row = (seen.row if seen is not None else self.row(thread_id)) or {}
        users = speakers(row)
        if user and user not in users:
            users.append(user)
        self.store.put(THREADS_NS, thread_id, {"user_id": user, "users": users, "turns": turns,
                                               "updated": time.time()})

    # ---- reads --------------------------------------------------------------------------------
    def row(self, thread_id: str) -> dict[str, Any] | None:
        """The thread's row (``None`` when unknown)."""
        if self.store is None:
            return None
        it = self.store.get(THREADS_NS, thread_id)
        return dict(it.value) if it is not None else None

    def rows(self, user: str | None = None) -> list[dict[str, Any]]:
        """Every known thread (or every thread ``user`` spoke in), most recent first; no window."""
        if self.store is None:
            return []
        if user is None:
            found = [{"id": it.key, **it.value} for it in search_all(self.store, THREADS_NS)]
        else:
            found = []
            for tid in keys_in(self.store, user_threads_namespace(user)):
                row = self.row(tid)
                if row is not None and user in speakers(row):
                    found.append({"id": tid, **row})
        return sorted(found, key=lambda r: -float(r.get("updated") or 0))

    def indexed(self, user: str) -> list[str]:
        """Threads indexed under the user (including ones whose first turn is running)."""
        return [] if self.store is None else keys_in(self.store, user_threads_namespace(user))

    # ---- forgetting -----------------------------------------------------------------------------
    def remove(self, thread_id: str, row: dict[str, Any] | None) -> None:
        """Drop a deleted thread's row and its speakers' index entries."""
        if self.store is None:
            return
        for user in speakers(row):
            self.store.delete(user_threads_namespace(user), thread_id)
        self.store.delete(THREADS_NS, thread_id)

    @contextlib.contextmanager
    def forgetting(self, user: str, ttl: float) -> Iterator[Any]:
        """Refuse the user's new turns (everywhere the store is shared) for the block; yields a function
        that extends the mark (call it before each long step; a crashed forget's mark lapses after ``ttl``)."""
        if self.store is None:
            yield lambda: None
            return

        def extend() -> None:
            self.store.put(FORGETTING_NS, user, {"until": time.time() + ttl})

        extend()
        try:
            yield extend
        finally:
            self.store.delete(FORGETTING_NS, user)

    def drop_user(self, user: str) -> dict[str, int]:
        """Delete the user's profile slots, audit log and thread index; counts of what was removed."""
        out = {"profile_slots": 0, "audit_entries": 0}
        if self.store is None:
            return out
        for name, ns in (("profile_slots", profile_namespace(user)), ("audit_entries", audit_namespace(user)),
                         ("", user_threads_namespace(user))):
            keys = keys_in(self.store, ns)
            for key in keys:
                self.store.delete(ns, key)
            if name:
                out[name] = len(keys)
        return out


def legacy_user(user: str | None) -> str | None:
    """A thread's stored user as a speaker: the pre-scope ``anonymous`` counts as none."""
    return None if user == LEGACY_ANONYMOUS else public_user(user)
