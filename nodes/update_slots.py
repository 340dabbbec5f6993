"""Node 2: apply candidates to anchored slots (corrections supersede), expire stale slots."""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from graph.engine import Engine, get_engine
from graph.namespaces import audit_namespace, profile_namespace, search_all
from graph.slots import LOG_LIMIT, apply_candidates, expire, forget
from graph.state import Slot, State
from nodes.common import thread_id, user_id

PROFILE_KINDS = ("fact", "preference", "instruction")
__all__ = ["PROFILE_KINDS", "audit_namespace", "head_snapshot", "profile_namespace", "update_slots"]


def head_snapshot(persona: str, slots: dict[str, Slot], l2: dict[str, Any] | None) -> dict[str, Any]:
    """What the frozen head shows (values only, so refreshing a slot does not rewrite it)."""
    return {"persona": persona, "slots": {k: {"kind": v.get("kind"), "value": v.get("value")} for k, v in slots.items()},
            "l2": l2}


def update_slots(state: State, config: RunnableConfig, runtime: Runtime | None = None, *,
                 engine: Engine | None = None) -> dict[str, Any]:
    """Returns the new slots, this turn's changes and the audit log; freezes the head on turn 1."""
    eng = engine or get_engine()
    tid, uid = thread_id(config), user_id(state, config)
    turn = int(state.get("turn") or 0) + 1
    slots: dict[str, Slot] = dict(state.get("slots") or {})
    events: list[dict[str, Any]] = []
    store = getattr(runtime, "store", None)
    if turn == 1 and not slots and store is not None:
        for item in search_all(store, profile_namespace(uid)):
            slots[item.key] = item.value  # type: ignore[assignment]
    slots, ev = expire(slots, thread_id=tid, user_id=uid, turn=turn)
    events += ev
    cands = list(state.get("candidates") or [])
    slots, ev = apply_candidates(slots, [c for c in cands if c["kind"] != "forget"], settings=eng.settings,
                                 thread_id=tid, user_id=uid, turn=turn)
    events += ev
    slots, ev = forget(slots, [c["key"] for c in cands if c["kind"] == "forget"], thread_id=tid, user_id=uid,
                       turn=turn)
    events += ev
    persona = state.get("persona") or eng.settings.persona
    head = state.get("head") or {}
    update: dict[str, Any] = {"slots": slots, "slot_changes": events,
                              "slot_log": (list(state.get("slot_log") or []) + events)[-LOG_LIMIT:]}
    if not head or head.get("persona") != persona:
        update["head"] = head_snapshot(persona, slots, state.get("l2"))
        update["slot_changes"] = [dict(e, in_head=True) for e in events]
    return update
