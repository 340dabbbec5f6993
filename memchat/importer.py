"""History import: a conversation held elsewhere becomes the past turns of a new memchat thread.

The turns are laid out as the graph would have left them after running them one by one: every message
in vector memory (deterministic ids), the user's explicit statements applied to the anchored slots (and
the user's profile), the oldest turns folded into L1 lines in blocks of ``l0_turns`` and old L1 lines
into L2 (the same summary calls and the same extractive fallback as the ``summarize`` node), the newest
turns verbatim. Used by the HTTP API (earlier messages sent to a thread that does not exist yet) and
by ``memchat import`` (JSONL, bulk migration).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, HumanMessage

from memchat.backends.vectorstore import MemoryDoc, msg_id
from memchat.memory.namespaces import public_user, search_all, thread_scope
from memchat.memory.prompt import Turn
from memchat.memory.rules import extract_rules, free_facts
from memchat.memory.slots import LOG_LIMIT, apply_operations, keep_grounded
from memchat.memory.state import Slot, TurnMeta

if TYPE_CHECKING:
    from memchat.chat import MemChat


class ThreadExists(ValueError):
    """History can only be imported into a thread that has no turns yet."""


def pair_history(history: list[tuple[str, str]]) -> list[Turn]:
    """(role, text) messages as turns: consecutive user messages are joined; a user message never
    answered becomes a turn with an empty reply."""
    turns: list[Turn] = []
    users: list[str] = []
    for role, text in history:
        if role == "user":
            users.append(text)
        elif role == "assistant":
            turns.append(Turn(turn=len(turns) + 1, user="\n\n".join(users), assistant=text))
            users = []
    if users:
        turns.append(Turn(turn=len(turns) + 1, user="\n\n".join(users), assistant=""))
    return turns


def verbatim_count(total: int, n: int) -> int:
    """How many of ``total`` turns the graph keeps verbatim: all below 2N, else N to 2N−1."""
    return total if total < 2 * n else n + (total - n) % n


def user_slots(slots: dict[str, Slot], turns: list[Turn], mc: MemChat, thread_id: str, user_id: str
               ) -> tuple[dict[str, Slot], list[dict[str, Any]]]:
    """The user's slot operations, turn by turn in order (corrections supersede, retractions remove)."""
    events: list[dict[str, Any]] = []
    for t in turns:
        cands = keep_grounded([c.as_dict() for c in extract_rules(t.user, "user")])
        slots, ev = apply_operations(slots, cands, settings=mc.settings, thread_id=thread_id, user_id=user_id,
                                     turn=t.turn)
        events += ev
    return slots, events


def fold(mc: MemChat, turns: list[Turn], *, llm: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any] | None, int]:
    """L1 lines (and L2) for turns that fell out of the verbatim window; returns (l1, l2, LLM calls)."""
    from memchat.nodes.summarize import fallback_summary, l1_coverage, summarize_l1, summarize_l2

    s, eng, n = mc.settings, mc.engine, mc.settings.l0_turns
    l1: list[dict[str, Any]] = []
    l2: dict[str, Any] | None = None
    calls = 0
    for i in range(0, len(turns), n):
        block = turns[i:i + n]
        if llm:
            text, _facts, ok = summarize_l1(eng, [(t.turn, t.user, t.assistant) for t in block])
            calls += 1
        else:
            text, ok = fallback_summary([t.user for t in block]), False
        l1.append({"from_turn": block[0].turn, "to_turn": block[-1].turn, "text": text, "llm": ok})
        if llm and l1_coverage(l1) >= s.l2_threshold + n:
            take, covered = [], 0
            for b in l1:
                if covered >= s.l2_threshold:
                    break
                take.append(b)
                covered += int(b["to_turn"]) - int(b["from_turn"]) + 1
            new_l2 = summarize_l2(eng, l2, take)
            calls += 1
            if new_l2 is not None:
                l2, l1 = new_l2, l1[len(take):]
    return l1, l2, calls


def store_turns(mc: MemChat, thread_id: str, user_id: str, turns: list[Turn],
                progress: Callable[[int], None] | None = None) -> None:
    """Both messages of each turn (thread-scoped, the graph's ids) and first-person facts (user-scoped)
    into vector memory, in batches."""
    from memchat.nodes.respond import fact_id

    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    for i in range(0, len(turns), 64):
        docs: list[MemoryDoc] = []
        for t in turns[i:i + 64]:
            for seq, speaker, text in ((2 * t.turn - 1, "user", t.user), (2 * t.turn, "assistant", t.assistant)):
                if text.strip():
                    docs.append(MemoryDoc(id=msg_id(thread_id, seq), text=text, user_id=user_id, thread_id=thread_id,
                                          kind="turn", speaker=speaker, turn=t.turn, seq=seq, date=date))
            docs += [MemoryDoc(id=fact_id(user_id, f), text=f, user_id=user_id, thread_id=thread_id, kind="fact",
                               speaker="user", turn=t.turn, date=date, scope="user") for f in free_facts(t.user)]
        mc.engine.store_docs(docs)
        if progress is not None:
            progress(len(turns[i:i + 64]))


def import_thread(mc: MemChat, thread_id: str, history: list[tuple[str, str]], *, user_id: str | None = None,
                  persona: str | None = None, llm: bool = True,
                  progress: Callable[[int], None] | None = None) -> int:
    """Make ``history`` the past turns of the new thread ``thread_id``; returns how many turns were
    imported. Raises :class:`ThreadExists` when the thread already has turns."""
    from memchat.memory.namespaces import audit_namespace, profile_namespace
    from memchat.memory.slots import PROFILE_KINDS, head_snapshot

    turns = [t for t in pair_history(history) if t.user.strip() or t.assistant.strip()]
    if not turns:
        return 0
    uid = user_id or thread_scope(thread_id)  # no user: the thread's own scope (never a shared profile)
    with mc.exclusive(thread_id):
        mc.registry.admit(thread_id, uid)
        mc.recover(thread_id)
        if mc.state(thread_id):
            raise ThreadExists(f"thread {thread_id!r} already has turns; history can only be imported into a "
                               "new thread")
        store = mc.store
        slots: dict[str, Slot] = {}
        if store is not None:
            slots = {it.key: it.value for it in search_all(store, profile_namespace(uid))}  # type: ignore[misc]
        slots, events = user_slots(slots, turns, mc, thread_id, uid)
        store_turns(mc, thread_id, uid, turns, progress)
        keep = verbatim_count(len(turns), mc.settings.l0_turns)
        l1, l2, calls = fold(mc, turns[:len(turns) - keep], llm=llm)
        recent = turns[len(turns) - keep:]
        messages: list[Any] = []
        for t in recent:
            messages += [HumanMessage(content=t.user, id=f"user:{thread_id}:{t.turn}"),
                         AIMessage(content=t.assistant, id=f"ai:{thread_id}:{t.turn}")]
        values: dict[str, Any] = {
            "messages": messages, "turn": len(turns), "user_id": public_user(uid), "persona": persona, "slots": slots,
            "slot_log": events[-LOG_LIMIT:], "frozen_head": head_snapshot(persona or mc.settings.persona, slots, l2),
            "l1": l1, "l2": l2, "l0_shown": [TurnMeta(turn=t.turn, memories=[], notes=[]) for t in recent],
            "slot_candidates": [], "slot_changes": [], "llm_facts_to_store": [], "retrieved": [],
            "counters": {"imported_turns": len(turns), "llm_calls_summary": calls},
        }
        mc.graph.update_state(mc.config(thread_id), values, as_node="respond")
        if store is not None:
            for i, ev in enumerate(events):
                store.put(audit_namespace(uid), f"{thread_id}:import:{i}", dict(ev))
            for key, slot in slots.items():
                if key.split(":", 1)[0] in PROFILE_KINDS:
                    store.put(profile_namespace(uid), key, dict(slot))
        mc.registry.record(thread_id, uid, len(turns))
    return len(turns)


def read_conversation(line: str, lineno: int) -> tuple[str, str | None, str | None, list[tuple[str, str]]]:
    """One JSONL line: ``{"thread_id", "user"?, "messages": [{"role", "content"}, ...]}`` → (thread, user,
    persona, history). Leading system/developer messages are the persona."""
    import json

    try:
        row = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"line {lineno}: not JSON ({exc})") from exc
    if not isinstance(row, dict) or not isinstance(row.get("thread_id"), str) or not row["thread_id"].strip():
        raise ValueError(f"line {lineno}: needs a non-empty string 'thread_id'")
    msgs = row.get("messages")
    if not isinstance(msgs, list):
        raise ValueError(f"line {lineno}: needs a 'messages' list")
    persona: list[str] = []
    history: list[tuple[str, str]] = []
    for i, m in enumerate(msgs):
        role, content = (m.get("role"), m.get("content")) if isinstance(m, dict) else (None, None)
        if role not in ("system", "developer", "user", "assistant") or not isinstance(content, str):
            raise ValueError(f"line {lineno}: messages[{i}] needs a role (system/user/assistant) and string content")
        if role in ("system", "developer"):
            if not history:
                persona.append(content)
            continue
        history.append((role, content))
    user = row.get("user")
    return row["thread_id"].strip(), str(user) if user else None, "\n\n".join(persona) or None, history


def import_file(mc: MemChat, path: str, *, llm: bool = True, progress: bool = True) -> dict[str, int]:
    """Import every conversation of a JSONL file (``memchat import``); existing threads are skipped."""
    from tqdm import tqdm

    with open(path, encoding="utf-8") as f:
        lines = [(i + 1, ln) for i, ln in enumerate(f) if ln.strip()]
    rows = [read_conversation(ln, i) for i, ln in lines]  # all lines are checked before anything is written
    out = {"threads": 0, "turns": 0, "skipped": 0}
    with tqdm(total=sum(len(pair_history(h)) for *_, h in rows), desc="importing", unit="turn",
              disable=not progress) as bar:
        for tid, user, persona, history in rows:
            try:
                n = import_thread(mc, tid, history, user_id=user, persona=persona, llm=llm, progress=bar.update)
            except ThreadExists:
                out["skipped"] += 1
                bar.update(len(pair_history(history)))
                continue
            out["threads"] += 1 if n else 0
            out["turns"] += n
    return out
