"""Anchored slots: apply candidates (corrections supersede), expire stale ones, keep an audit log."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from difflib import SequenceMatcher
from typing import Any

from memchat.memory.rules_words import MULTI_KEYS
from memchat.memory.state import Slot
from memchat.memory.textproc import overlap, tokenize
from memchat.settings import Settings

USER_ONLY_KINDS = ("instruction", "preference", "task")
SLOT_KINDS = ("instruction", "preference", "fact", "task")
LOG_LIMIT = 500
REMOVED = ("retracted", "completed", "forgotten", "expired")  # actions that take a slot out of the head
_PRONOUNS = frozenset({"", "it", "that", "this", "everything", "它", "这个", "那个", "都", "全部"})


def _expiry(settings: Settings, kind: str, turn: int, now: float) -> tuple[int | None, float | None]:
    ttl_t = settings.ttl_turns(kind)
    ttl_s = settings.ttl_seconds(kind)
    return (turn + ttl_t if ttl_t else None, now + ttl_s if ttl_s else None)


def family(slots: dict[str, Any], base: str) -> list[str]:
    """Keys of one kind of slot: ``fact:order_number``, ``fact:order_number_2`` …"""
    return sorted((k for k in slots if k == base or re.fullmatch(re.escape(base) + r"_\d+", k)),
                  key=lambda k: (len(k), k))


def _related(a: str, b: str) -> bool:
    a, b = _norm(a), _norm(b)
    if not a or not b:
        return False
    if a in b or b in a:
        return True
    return bool(set(tokenize(a)) & set(tokenize(b)))


def _targets(slots: dict[str, Any], keys: list[str], c: dict[str, Any]) -> list[str]:
    """Which slots a retraction or completion names (a topic instruction: all of that topic)."""
    kind = c.get("kind")
    named = str(c.get("old") or c.get("value") or "")
    if kind in ("instruction", "preference") or _norm(named) in _PRONOUNS:
        return keys
    return [k for k in keys if _related(named, str(slots[k].get("value", "")))]


def _correct_target(slots: dict[str, Any], keys: list[str], c: dict[str, Any]) -> str:
    """The one slot of several a correction replaces: the one it names, else the most alike, else the newest."""
    old = str(c.get("old") or "")
    for k in keys:
        if old and _related(old, str(slots[k].get("value", ""))):
            return k
    ratio = {k: SequenceMatcher(None, _norm(str(slots[k].get("value", ""))), _norm(c["value"])).ratio() for k in keys}
    best = max(keys, key=lambda k: ratio[k])
    if ratio[best] >= 0.5:
        return best
    return max(keys, key=lambda k: (slots[k].get("turn") or 0, slots[k].get("time") or 0))


def _free_key(slots: dict[str, Any], base: str) -> str:
    n = 2
    while f"{base}_{n}" in slots:
        n += 1
    return f"{base}_{n}"


def apply_candidates(
    slots: dict[str, Slot], candidates: list[dict[str, Any]], *, settings: Settings, thread_id: str,
    user_id: str, turn: int, now: float | None = None,
) -> tuple[dict[str, Slot], list[dict[str, Any]]]:
    """Apply slot operations (set, correct, retract, complete); return the new slots and the audit events."""
    now = time.time() if now is None else now
    out: dict[str, Any] = {k: dict(v) for k, v in slots.items()}
    events: list[dict[str, Any]] = []
    ctx: dict[str, Any] = dict(thread_id=thread_id, user_id=user_id, turn=turn, now=now)
    for c in candidates:
        kind, op, key = c.get("kind"), c.get("op") or "set", c["key"]
        if kind not in SLOT_KINDS:
            continue
        source = c.get("source", "user")
        why = c.get("evidence", "")
        if kind in USER_ONLY_KINDS and source != "user":
            events.append(_event("rejected", key, None, c["value"], **ctx, reason=f"{kind} slots come only from the "
                                 f"user, not from {source}", why=why))
            continue
        keys = family(out, key)
        if op in ("retract", "complete"):
            action = "retracted" if op == "retract" else "completed"
            for k in _targets(out, keys, c):
                events.append(_event(action, k, out[k].get("value"), None, **ctx, old_turn=out[k].get("turn"), why=why))
                del out[k]
            continue
        same = [k for k in keys if _norm(str(out[k].get("value", ""))) == _norm(c["value"])]
        if any(out[k].get("source") == "user" for k in keys) and source != "user" and not same:
            continue  # the user's own word wins over another source
        exp_turn, exp_at = _expiry(settings, kind, turn, now)
        if same:
            out[same[0]].update(last_seen_turn=turn, expires_turn=exp_turn, expires_at=exp_at)
            continue
        if not keys:
            target, action = key, "set"
        elif key.split(":", 1)[-1] not in MULTI_KEYS:
            target, action = keys[0], "corrected"
        elif op == "correct":
            target, action = _correct_target(out, keys, c), "corrected"
        else:
            target, action = _free_key(out, key), "set"
        old = out.get(target)
        out[target] = Slot(key=target, kind=kind, value=c["value"], source=source, evidence=why, thread_id=thread_id,
                           user_id=user_id, turn=turn, last_seen_turn=turn, time=now, expires_turn=exp_turn,
                           expires_at=exp_at)
        extra = {"old_turn": old.get("turn")} if old else {}
        events.append(_event(action, target, old.get("value") if old else None, c["value"], **ctx, why=why, **extra))
    return out, events  # type: ignore[return-value]


def forget(slots: dict[str, Slot], names: list[str], *, thread_id: str, user_id: str, turn: int,
           now: float | None = None, why: str = "") -> tuple[dict[str, Slot], list[dict[str, Any]]]:
    """Drop slots the user asked to forget: keys ("fact:email", "*" = all) or names ("order number")."""
    now = time.time() if now is None else now
    out = dict(slots)
    events = []
    for name in names:
        if name == "*":
            keys = list(out)
        elif ":" in name:
            keys = family(out, name)
        else:
            norm = name.lower().replace(" ", "_")
            keys = [k for k in out if k.split(":", 1)[-1] == norm or k.endswith(norm)]
        for key in keys:
            events.append(_event("forgotten", key, out[key].get("value"), None, thread_id=thread_id, user_id=user_id,
                                 turn=turn, now=now, why=why))
            del out[key]
    return out, events


GROUNDING_MIN = 0.5


def grounded(candidate: dict[str, Any], source_text: str) -> bool:
    """A candidate is kept only when its source text supports it (lexical check)."""
    value = str(candidate.get("value", ""))
    if value and value.lower() in source_text.lower():
        return True
    return overlap(value, source_text) >= GROUNDING_MIN


def keep_grounded(cands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operations to apply: every retract / correct / complete / forget, and each ``set`` whose value its
    evidence supports."""
    return [c for c in cands if c.get("op") != "set" or grounded(c, str(c.get("evidence", "")))]


def apply_operations(slots: dict[str, Slot], cands: list[dict[str, Any]], *, settings: Settings, thread_id: str,
                     user_id: str, turn: int) -> tuple[dict[str, Slot], list[dict[str, Any]]]:
    """Apply one turn's slot operations in order (forget requests by name, the rest by key)."""
    events: list[dict[str, Any]] = []
    for c in cands:
        if c["kind"] == "forget" or c.get("op") == "forget":
            slots, ev = forget(slots, [c["key"]], thread_id=thread_id, user_id=user_id, turn=turn,
                               why=c.get("evidence", ""))
        else:
            slots, ev = apply_candidates(slots, [c], settings=settings, thread_id=thread_id, user_id=user_id,
                                         turn=turn)
        events += ev
    return slots, events


def expire(slots: dict[str, Slot], *, thread_id: str, user_id: str, turn: int,
           now: float | None = None) -> tuple[dict[str, Slot], list[dict[str, Any]]]:
    """Remove slots past their turn or time expiry."""
    now = time.time() if now is None else now
    out: dict[str, Slot] = {}
    events = []
    for key, s in slots.items():
        exp_t, exp_at = s.get("expires_turn"), s.get("expires_at")
        if (exp_t is not None and turn > exp_t) or (exp_at is not None and now > exp_at):
            events.append(_event("expired", key, s.get("value"), None, thread_id=thread_id, user_id=user_id,
                                 turn=turn, now=now))
        else:
            out[key] = s
    return out, events


def _norm(v: str) -> str:
    return " ".join(v.lower().split())


def _event(action: str, key: str, old: Any, new: Any, *, thread_id: str, user_id: str, turn: int, now: float,
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
    if ev["action"] == "completed":
        return f"{label}: done, no longer current (was {ev['old']})"
    if ev["action"] in ("expired", "forgotten", "retracted"):
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
        label = re.sub(r"_\d+$", "", key.split(":", 1)[-1]).replace("_", " ")
        origin = f"; {s['origin']}" if s.get("origin") else ""
        lines.append(f"- {label}: {s.get('value')} ({s.get('kind')}{origin})")
    return "\n".join(lines)


PROFILE_KINDS = ("fact", "preference", "instruction")  # slot kinds that follow the user into new threads


def head_snapshot(persona: str, slots: dict[str, Slot], l2: dict[str, Any] | None) -> dict[str, Any]:
    """What the frozen head shows (values only, so refreshing a slot does not rewrite it)."""
    shown: dict[str, Any] = {}
    for k, v in slots.items():
        shown[k] = {"kind": v.get("kind"), "value": v.get("value")}
        if v.get("origin"):
            shown[k]["origin"] = v["origin"]
    return {"persona": persona, "slots": shown, "l2": l2}


def persona_of(state: Mapping[str, Any], default: str) -> str:
    """The persona a thread's prompt uses: the one frozen in its head, else the state's, else ``default``."""
    return str((state.get("frozen_head") or {}).get("persona") or state.get("persona") or default)
