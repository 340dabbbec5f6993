"""Node 2: apply slot operations (set, correct, retract, complete, forget), expire stale slots."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from memchat.backends.engine import Engine
from memchat.memory.namespaces import audit_namespace, profile_namespace, search_all
from memchat.memory.slots import LOG_LIMIT, PROFILE_KINDS, REMOVED, apply_operations, expire, head_snapshot
from memchat.memory.state import Context, Slot, State
from memchat.nodes.common import thread_id, user_id

__all__ = ["PROFILE_KINDS", "audit_namespace", "head_snapshot", "profile_namespace", "update_slots"]


def carried(slot: dict[str, Any], tid: str) -> Slot:
    """A profile slot from another thread, marked as coming from an earlier conversation (with its date)."""
    out = dict(slot)
    if out.get("thread_id") and out.get("thread_id") != tid and out.get("time"):
        day = datetime.fromtimestamp(float(out["time"]), UTC).strftime("%Y-%m-%d")
        out["origin"] = f"from an earlier conversation, {day}"
    return out  # type: ignore[return-value]


def update_slots(state: State, config: RunnableConfig, runtime: Runtime[Context] | None = None, *,
                 engine: Engine) -> dict[str, Any]:
    """Returns the new slots, this turn's changes and the audit log; freezes the head on turn 1.

    A slot that was retracted, completed, forgotten or expired leaves the head at once (the head is
    rebuilt): what the head shows is never stale. Other changes go to the prompt tail until compaction.
    """
    eng = engine
    tid, uid = thread_id(config), user_id(state, config, runtime)
    turn = int(state.get("turn") or 0) + 1
    slots: dict[str, Slot] = dict(state.get("slots") or {})
    events: list[dict[str, Any]] = []
    store = getattr(runtime, "store", None)
    if turn == 1 and not slots and store is not None:
        for item in search_all(store, profile_namespace(uid)):
            slots[item.key] = carried(item.value, tid)
    slots, ev = expire(slots, thread_id=tid, user_id=uid, turn=turn)
    events += ev
    slots, ev = apply_operations(slots, list(state.get("slot_candidates") or []), settings=eng.settings, thread_id=tid,
                                 user_id=uid, turn=turn)
    events += ev
    persona = state.get("persona") or eng.settings.persona
    head = state.get("frozen_head") or {}
    update: dict[str, Any] = {"slots": slots, "slot_changes": events,
                              "slot_log": (list(state.get("slot_log") or []) + events)[-LOG_LIMIT:]}
    removed = any(e["action"] in REMOVED and e["key"] in (head.get("slots") or {}) for e in events)
    if not head or head.get("persona") != persona or removed:
        update["frozen_head"] = head_snapshot(persona, slots, state.get("l2"))
        update["slot_changes"] = [dict(e, in_head=True) for e in events]
    return update
