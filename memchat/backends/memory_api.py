"""The public memory API: ``recall``, ``remember`` and the slots/profile view.

Stable entry points for code outside memchat's own graph (a LangChain agent, a hand-built LangGraph
agent) and used by memchat's nodes too, so there is one way to read and write a user's memory:

* :func:`recall` — hybrid retrieval for a query, each sentence at most once (a fact and the message
  it came from are never both returned);
* :func:`remember` — a turn's messages (user, assistant, tool results) into vector memory with
  idempotent ids (a retried turn upserts, never duplicates); with a thread state and a store, also the
  slot audit log and the user's cross-thread profile;
* :func:`profile` / :func:`slots_view` — the user's profile slots and a thread's slots with provenance.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from memchat.backends.engine import Engine, shared_engine
from memchat.backends.vectorstore import MemoryDoc, msg_id
from memchat.memory.namespaces import audit_namespace, profile_namespace, search_all
from memchat.memory.recall_policy import carries_fact
from memchat.memory.rules import free_facts, sentences
from memchat.memory.slots import REMOVED
from memchat.settings import get_settings

PROFILE_KINDS = ("fact", "preference", "instruction")
TOOL_SPEAKER = "tool"

__all__ = ["PROFILE_KINDS", "fact_id", "memory_docs", "profile", "recall", "remember", "slots_view",
           "tool_docs", "write_profile"]


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split()).rstrip(".!?。！？")


def _text(m: BaseMessage) -> str:
    c = m.content
    if isinstance(c, str):
        return c
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in c)


def fact_id(user: str, text: str) -> str:
    """Content-addressed id of a user-scoped fact (the same fact is stored once)."""
    return "fact:" + hashlib.sha1(f"{user}\n{' '.join(text.lower().split())}".encode()).hexdigest()[:20]


def recall(query: str, user: str, thread: str | None = None, budget: int | None = None, *,
           engine: Engine | None = None, exclude_ids: set[str] | None = None) -> list[dict[str, Any]]:
    """Memories for ``query`` within ``budget`` tokens (default ``MEMCHAT_MEMORY_TOKENS``), in the order
    they are shown (``memchat.memory.prompt.memory_line`` renders one).

    ``thread`` adds that thread's raw turns to the user's facts (``None``: every memory of the user). A
    fact whose sentence is also in a returned message is dropped: each sentence comes back once."""
    eng = engine or shared_engine(get_settings())
    cap = eng.settings.memory_tokens if budget is None else int(budget)
    items = eng.recall(query, user_id=user, thread_id=thread, budget_tokens=cap, exclude_ids=exclude_ids)
    return dedupe_sentences(items)


def dedupe_sentences(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop items whose every sentence is already shown by another item (a fact and its source turn)."""
    said: dict[str, int] = {}
    for i, it in enumerate(items):
        if it.get("kind") != "fact":
            for s in sentences(str(it.get("text", ""))) + [str(it.get("text", ""))]:
                said.setdefault(_norm(s), i)
    out, seen = [], set()
    for i, it in enumerate(items):
        key = _norm(str(it.get("text", "")))
        parts = [_norm(s) for s in sentences(str(it.get("text", "")))] or [key]
        if key in seen or (it.get("kind") == "fact" and all(said.get(p, i) != i for p in parts)):
            continue
        seen.add(key)
        out.append(it)
    return out


def memory_docs(state: Mapping[str, Any], tid: str, uid: str, turn: int, message: str, reply_text: str,
                date: str) -> list[MemoryDoc]:
    """A turn's vector memories: both messages (thread-scoped) and the user's free facts (user-scoped)."""
    docs = [
        MemoryDoc(id=msg_id(tid, 2 * turn - 1), text=message, user_id=uid, thread_id=tid, kind="turn", speaker="user",
                  turn=turn, seq=2 * turn - 1, date=date),
        MemoryDoc(id=msg_id(tid, 2 * turn), text=reply_text, user_id=uid, thread_id=tid, kind="turn",
                  speaker="assistant", turn=turn, seq=2 * turn, date=date),
    ]
    # facts: only statements that carry one (no chit-chat such as "好的，我考虑一下。")
    facts = [f for f in free_facts(message) if carries_fact(f)] + [str(p["text"]) for p in state.get("llm_facts_to_store") or []]
    docs += [MemoryDoc(id=fact_id(uid, f), text=f, user_id=uid, thread_id=tid, kind="fact", speaker="user", turn=turn,
                       date=date, scope="user") for f in dict.fromkeys(facts)]
    return docs


def tool_docs(tool_messages: Sequence[BaseMessage], tid: str, uid: str, turn: int, date: str,
              engine: Engine | None = None) -> list[MemoryDoc]:
    """A turn's tool results (thread-scoped, ``speaker="tool"``), each capped at ``MEMCHAT_MAX_MESSAGE_TOKENS``."""
    eng = engine or shared_engine(get_settings())
    out = []
    for i, m in enumerate(t for t in tool_messages if isinstance(t, ToolMessage)):
        text = _text(m).strip()
        if not text:
            continue
        text = eng.tokenizer.truncate(text, eng.settings.max_message_tokens)
        name = f"{m.name}: " if getattr(m, "name", None) else ""
        out.append(MemoryDoc(id=f"tool:{tid}:{turn}:{i}", text=name + text, user_id=uid, thread_id=tid, kind="turn",
                             speaker=TOOL_SPEAKER, turn=turn, seq=0, date=date))
    return out


def write_profile(store: Any, state: Mapping[str, Any], tid: str, uid: str, turn: int) -> None:
    """The turn's slot changes into the audit log, and the user's cross-thread profile (idempotent keys)."""
    if store is None:
        return
    slots = state.get("slots") or {}
    for i, ev in enumerate(state.get("slot_changes") or []):
        store.put(audit_namespace(uid), f"{tid}:{turn}:{i}", dict(ev))
        key = ev["key"]
        if key.split(":", 1)[0] in PROFILE_KINDS:
            if key in slots and ev["action"] in ("set", "corrected"):
                store.put(profile_namespace(uid), key, dict(slots[key]))
            elif ev["action"] in REMOVED:
                store.delete(profile_namespace(uid), key)


def remember(messages: Sequence[BaseMessage], user: str, thread: str, *, turn: int | None = None,
             engine: Engine | None = None, store: Any = None, state: Mapping[str, Any] | None = None,
             date: str | None = None) -> list[MemoryDoc]:
    """Store one turn: its user message, final reply, tool results and the user's facts; returns the docs.

    ``turn`` (1-based) gives the ids memchat's graph uses (``msg:THREAD:SEQ``); without it, ids are
    content hashes. ``state`` (the thread's memchat state after the turn's slot update) and ``store``
    add the slot audit log and the profile. Writing the same turn again changes nothing."""
    eng = engine or shared_engine(get_settings())
    date = date or datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    human = next((m for m in messages if isinstance(m, HumanMessage)), None)
    finals = [m for m in messages if isinstance(m, AIMessage) and not m.tool_calls]
    message = _text(human) if human is not None else ""
    reply = _text(finals[-1]) if finals else ""
    n = turn if turn is not None else 0
    docs = memory_docs(state or {}, thread, user, n, message, reply, date) if turn is not None else [
        MemoryDoc(id=f"msg:{thread}:h{fact_id(user, t)[5:]}", text=t, user_id=user, thread_id=thread, kind="turn",
                  speaker=who, date=date) for who, t in (("user", message), ("assistant", reply)) if t]
    docs = [d for d in docs if d.text.strip()]
    docs += tool_docs(messages, thread, user, n, date, eng)
    if turn is not None:
        write_profile(store, state or {}, thread, user, turn)
    eng.store_docs(docs)
    return docs


def profile(store: Any, user: str) -> dict[str, dict[str, Any]]:
    """The user's profile slots (facts, preferences, instructions carried across threads)."""
    if store is None:
        return {}
    return {it.key: dict(it.value) for it in search_all(store, profile_namespace(user))}


def slots_view(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A thread's current slots with provenance, sorted by key (what ``MemChat.memory`` shows)."""
    return [dict(v, key=k) for k, v in sorted((state.get("slots") or {}).items())]
