"""Forgetting: a thread, or a user everywhere, across checkpoints, vector memory, profile and audit log.

Functions over a :class:`memchat.chat.MemChat` (its locks, registry, stores); the facade's
``delete_thread`` / ``delete_user`` call them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memchat.backends.registry import legacy_user, speakers
from memchat.memory.namespaces import thread_scope

if TYPE_CHECKING:
    from memchat.chat import MemChat


def drop_thread(mc: MemChat, thread_id: str, st: dict[str, Any], row: dict[str, Any] | None) -> dict[str, Any]:
    """Delete a thread the caller holds exclusively: its checkpoints, view, thread-scoped memories and, when it
    had no user, its own profile slots and facts."""
    mc.checkpointer.delete_thread(thread_id)  # type: ignore[union-attr]
    mc.views.drop(thread_id)
    scope = thread_scope(thread_id)
    removed = mc.engine.memory.delete_thread(thread_id) + mc.engine.memory.delete_user(scope)
    own = mc.registry.drop_user(scope)
    mc.registry.remove(thread_id, row)
    return {"thread_id": thread_id, "deleted": bool(st), "memories_removed": removed,
            "slots_removed": len(st.get("slots") or {}) + own["profile_slots"]}


def forget_user(mc: MemChat, user_id: str) -> dict[str, Any]:
    """Forget a user everywhere: every thread they spoke in (shared ones whole: they hold the user's words),
    every vector memory, the profile slots, the audit log. The user's turns are refused while this runs, and a
    turn already running finishes first, so nothing of the user is written after."""
    out: dict[str, Any] = {"user_id": user_id, "threads_deleted": [], "shared_threads_deleted": [],
                           "memories_removed": 0, "thread_slots_removed": 0}
    ttl = 2 * mc.leases.wait + 60
    with mc.lock("/forget/" + user_id), mc.registry.forgetting(user_id, ttl) as extend:
        for tid in mc.registry.indexed(user_id):
            extend()
            with mc.exclusive(tid):
                st, row = mc.state(tid), mc.registry.row(tid)
                users = speakers(row) if row else [u for u in [legacy_user(st.get("user_id"))] if u and st]
                if user_id not in users:
                    continue  # a stale index entry: the user never completed a turn here
                res = drop_thread(mc, tid, st, row)
            out["threads_deleted"].append(tid)
            if set(users) - {user_id}:
                out["shared_threads_deleted"].append(tid)
            out["memories_removed"] += res["memories_removed"]
            out["thread_slots_removed"] += res["slots_removed"]
        out["memories_removed"] += mc.engine.memory.delete_user(user_id)
        counts = mc.registry.drop_user(user_id)
    out["profile_slots_removed"] = counts["profile_slots"]
    out["audit_entries_removed"] = counts["audit_entries"]
    return out
