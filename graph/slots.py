"""Anchored slots: apply candidates (corrections supersede), expire stale ones, keep an audit log."""

from __future__ import annotations

import time
from typing import Any

from graph.settings import Settings
from graph.state import Slot

USER_ONLY_KINDS = ("instruction", "preference", "task")
SLOT_KINDS = ("instruction", "preference", "fact", "task")
LOG_LIMIT = 500


def _expiry(settings: Settings, kind: str, turn: int, now: float) -> tuple[int | None, float | None]:
    ttl_t = settings.ttl_turns(kind)
    ttl_s = settings.ttl_seconds(kind)
    return (turn + ttl_t if ttl_t else None, now + ttl_s if ttl_s else None)


def apply_candidates(
    slots: dict[str, Slot], candidates: list[dict[str, Any]], *, settings: Settings, thread_id: str,
    user_id: str, turn: int, now: float | None = None,
) -> tuple[dict[str, Slot], list[dict[str, Any]]]:
    """Return the new slots and the changes (audit events) this turn."""
    now = time.time() if now is None else now
    out: dict[str, Any] = {k: dict(v) for k, v in slots.items()}
    events: list[dict[str, Any]] = []
    for c in candidates:
        kind = c.get("kind")
        if kind not in SLOT_KINDS:
            continue
        source = c.get("source", "user")
        if kind in USER_ONLY_KINDS and source != "user":
            events.append(_event("rejected", c["key"], None, c["value"], thread_id, user_id, turn, now,
                                 reason=f"{kind} slots come only from the user, not from {source}"))
            continue
        key = c["key"]
        old = out.get(key)
        if old is not None and old.get("source") == "user" and source != "user":
            continue  # the user's own word wins over an assistant confirmation
        exp_turn, exp_at = _expiry(settings, kind, turn, now)
        new: Slot = Slot(key=key, kind=kind, value=c["value"], source=source, evidence=c.get("evidence", ""),
                         thread_id=thread_id, user_id=user_id, turn=turn, last_seen_turn=turn, time=now,
                         expires_turn=exp_turn, expires_at=exp_at)
        if old is None:
            out[key] = new
            events.append(_event("set", key, None, new["value"], thread_id, user_id, turn, now))
        elif _norm(str(old.get("value", ""))) == _norm(new["value"]):
            old.update(last_seen_turn=turn, expires_turn=exp_turn, expires_at=exp_at)
        else:
            out[key] = new
            events.append(_event("corrected", key, old.get("value"), new["value"], thread_id, user_id, turn, now,
                                 old_turn=old.get("turn")))
    return out, events  # type: ignore[return-value]


def forget(slots: dict[str, Slot], names: list[str], *, thread_id: str, user_id: str, turn: int,
           now: float | None = None) -> tuple[dict[str, Slot], list[dict[str, Any]]]:
    """Drop slots the user asked to forget ("forget my order number")."""
    now = time.time() if now is None else now
    out = dict(slots)
    events = []
    for name in names:
        norm = name.lower().replace(" ", "_")
        for key in list(out):
            if key.split(":", 1)[-1] == norm or key.endswith(norm):
                events.append(_event("forgotten", key, out[key].get("value"), None, thread_id, user_id, turn, now))
                del out[key]
    return out, events


def expire(slots: dict[str, Slot], *, thread_id: str, user_id: str, turn: int,
           now: float | None = None) -> tuple[dict[str, Slot], list[dict[str, Any]]]:
    """Remove slots past their turn or time expiry."""
    now = time.time() if now is None else now
    out: dict[str, Slot] = {}
    events = []
    for key, s in slots.items():
        exp_t, exp_at = s.get("expires_turn"), s.get("expires_at")
        if (exp_t is not None and turn > exp_t) or (exp_at is not None and now > exp_at):
            events.append(_event("expired", key, s.get("value"), None, thread_id, user_id, turn, now))
        else:
            out[key] = s
    return out, events


def _norm(v: str) -> str:
    return " ".join(v.lower().split())


def _event(action: str, key: str, old: Any, new: Any, thread_id: str, user_id: str, turn: int, now: float,
           **extra: Any) -> dict[str, Any]:
    return dict(action=action, key=key, old=old, new=new, thread_id=thread_id, user_id=user_id, turn=turn,
                time=now, **extra)


def describe_change(ev: dict[str, Any]) -> str:
    """One line for the prompt tail announcing a slot change."""
    label = ev["key"].replace(":", " / ")
    if ev["action"] == "set":
        return f"{label}: {ev['new']}"
    if ev["action"] == "corrected":
        return f"{label}: {ev['new']} (corrected; was {ev['old']})"
    if ev["action"] in ("expired", "forgotten"):
        return f"{label}: no longer applies (was {ev['old']})"
    return ""


def render_slots(slots: dict[str, Any]) -> str:
    """Stable, sorted rendering of slots for the frozen head."""
    if not slots:
        return "(none yet)"
    order = {k: i for i, k in enumerate(SLOT_KINDS)}
    lines = []
    for key in sorted(slots, key=lambda k: (order.get(slots[k].get("kind", ""), 9), k)):
        s = slots[key]
        lines.append(f"- {key.split(':', 1)[-1].replace('_', ' ')}: {s.get('value')} ({s.get('kind')})")
    return "\n".join(lines)
