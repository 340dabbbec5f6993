"""Long-term memory for stateless callers that name a ``user`` (no thread id).

A backend that keeps its own chat history sends it whole with every request. With ``user`` set, memchat
treats that history with the thread layout (``memchat.server.stateless.build_prompt``: recent turns verbatim, the
overflow folded into L1 lines in blocks) and adds the user's long-term memory:

* the user's **profile slots** (facts, preferences, instructions from any thread or session) in the head;
  a slot whose source message is still verbatim in the history is left to that message, so the head
  only changes when the overflow grows by a block (prefix caches keep hitting);
* **recall** from the user's vector memory (the engine's hybrid search over all of the user's memories)
  for the new message, minus what the verbatim history already shows;
* after the reply, the **new turn is stored** (and the history sent, when it was not stored yet), and
  the user's explicit statements update the profile, so a later session recalls them.

Storage is idempotent: a message's id is a hash of (user, speaker, text), and only ids not yet in vector
memory are embedded, so a history re-sent with every request is stored once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from memchat.backends.vectorstore import MemoryDoc
from memchat.chat import MemChat
from memchat.importer import user_slots
from memchat.memory.namespaces import profile_namespace, search_all
from memchat.memory.prompt import Turn
from memchat.memory.rules import free_facts
from memchat.memory.slots import PROFILE_KINDS
from memchat.memory.state import Slot
from memchat.nodes.respond import fact_id
from memchat.server.stateless import StatelessPrompt, StatelessResult, build_prompt, pair_turns, stream_answer

log = logging.getLogger("memchat.stateless")

STATELESS_THREAD = "stateless"  # the thread label of stateless messages in vector memory


def message_id(user: str, speaker: str, text: str) -> str:
    """Content-addressed id of a stateless message: the same message of the same user is stored once."""
    norm = " ".join(text.split())
    return "sl:" + hashlib.sha1(f"{user}\n{speaker}\n{norm}".encode()).hexdigest()[:24]


def turn_docs(user: str, turns: list[Turn], date: str) -> list[MemoryDoc]:
    """Vector-memory documents of turns: both messages (thread-scoped) and first-person facts (user-scoped)."""
    docs: list[MemoryDoc] = []
    for t in turns:
        for speaker, text in (("user", t.user), ("assistant", t.assistant)):
            if text.strip():
                docs.append(MemoryDoc(id=message_id(user, speaker, text), text=text, user_id=user,
                                      thread_id=STATELESS_THREAD, kind="turn", speaker=speaker, turn=t.turn,
                                      date=date))
        docs += [MemoryDoc(id=fact_id(user, f), text=f, user_id=user, thread_id=STATELESS_THREAD, kind="fact",
                           speaker="user", turn=t.turn, date=date, scope="user") for f in free_facts(t.user)]
    return docs


def store_missing(mc: MemChat, docs: list[MemoryDoc]) -> int:
    """Embed and store only the documents not stored yet; returns how many were new."""
    uniq = {d.id: d for d in docs if d.text.strip()}
    if not uniq:
        return 0
    have = {d.id for d in mc.engine.memory.get_ids(list(uniq))}
    new = [d for i, d in uniq.items() if i not in have]
    if new:
        mc.engine.store_docs(new)
    return len(new)


def load_profile(mc: MemChat, user: str) -> dict[str, Slot]:
    """The user's cross-thread profile slots."""
    if mc.store is None:
        return {}
    return {it.key: it.value for it in search_all(mc.store, profile_namespace(user))}  # type: ignore[misc]


def head_slots(profile: dict[str, Slot], verbatim: list[Turn]) -> dict[str, Slot]:
    """Profile slots for the head, minus those whose source message is still verbatim in the prompt."""
    texts = [t.user for t in verbatim]
    return {k: v for k, v in profile.items()
            if not (v.get("evidence") and any(str(v["evidence"]) in t for t in texts))}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M")


def build_user_prompt(mc: MemChat, persona: str, history: list[tuple[str, str]], message: str, user: str,
                      context: str | None = None) -> StatelessPrompt:
    """The stateless prompt with the user's profile and recall (the history is stored first, so that what
    overflows it is found by recall at once)."""
    store_missing(mc, turn_docs(user, pair_turns(history), _now()))
    profile = load_profile(mc, user)
    new_id = message_id(user, "user", message)

    def recall(_over: list[Turn], verbatim: list[Turn], budget: int) -> list[dict[str, Any]]:
        shown = {message_id(user, sp, text) for t in verbatim for sp, text in (("user", t.user),
                                                                             ("assistant", t.assistant))}
        try:
            return mc.engine.recall(message, user_id=user, thread_id=None, budget_tokens=budget,
                                    exclude_ids=shown | {new_id})
        except Exception as exc:  # degrade: answer without recalled memories, and count it
            log.warning("retrieval failed: %s", exc)
            mc.engine.metrics.inc("retrieval_failures")
            return []

    prompt = build_prompt(mc.engine, persona, history, message, base_slots=lambda v: head_slots(profile, v),
                          recall=recall, context=context)
    return prompt


def remember(mc: MemChat, user: str, history: list[tuple[str, str]], message: str, reply: str) -> int:
    """Store the new turn and update the user's profile from the session's explicit statements;
    returns how many documents were new."""
    turns = pair_turns(history)
    turns.append(Turn(turn=len(turns) + 1, user=message, assistant=reply))
    new = store_missing(mc, turn_docs(user, turns[-1:], _now()))
    if mc.store is not None:
        old = load_profile(mc, user)
        slots, _ = user_slots(dict(old), turns, mc, STATELESS_THREAD, user)
        for key, slot in slots.items():
            if key.split(":", 1)[0] in PROFILE_KINDS and (old.get(key) or {}).get("value") != slot.get("value"):
                mc.store.put(profile_namespace(user), key, dict(slot))
        for key in set(old) - set(slots):  # retracted, completed, forgotten or expired
            mc.store.delete(profile_namespace(user), key)
    return new


def stream_and_remember(mc: MemChat, prompt: StatelessPrompt, llm_params: dict[str, Any], user: str,
                        history: list[tuple[str, str]], message: str) -> Iterator[str | StatelessResult]:
    """One LLM call (``stream_answer``); once the reply is complete, :func:`remember` it."""
    for item in stream_answer(mc.engine, prompt, llm_params):
        if isinstance(item, StatelessResult):
            try:
                remember(mc, user, history, message, item.reply)
            except Exception as exc:  # the reply stands; the turn is stored when the history is sent again
                log.warning("storing the stateless turn failed: %s", exc)
                mc.engine.metrics.inc("memory_write_failures")
        yield item
