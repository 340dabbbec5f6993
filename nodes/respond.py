"""Node 5: assemble the prefix-stable prompt within budget, stream the reply, persist memories."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from memchat.backends.engine import Engine
from memchat.backends.llm import cached_tokens, classify_error, generation_params
from memchat.backends.vectorstore import MemoryDoc, msg_id
from memchat.memory.namespaces import audit_namespace, profile_namespace
from memchat.memory.prompt import assemble, prefix_reuse, render_head
from memchat.memory.recall_policy import carries_fact
from memchat.memory.receipts import add_receipt
from memchat.memory.rules import free_facts
from memchat.memory.slots import PROFILE_KINDS, REMOVED
from memchat.memory.state import Context, State, TurnMeta
from memchat.nodes.common import (
    current_message,
    l0_turns,
    request_context,
    run_context,
    text_of,
    thread_id,
    user_id,
    with_context,
)

PASS_THROUGH = ("max_tokens", "temperature", "top_p", "stop", "response_format", "seed")


def to_lc(messages: list[dict[str, str]]) -> list[BaseMessage]:
    """Chat dicts to LangChain messages."""
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[m["role"]](content=m["content"]) for m in messages]  # type: ignore[misc]


def fact_id(user: str, text: str) -> str:
    """Content-addressed id of a user-scoped fact (the same fact is stored once)."""
    return "fact:" + hashlib.sha1(f"{user}\n{' '.join(text.lower().split())}".encode()).hexdigest()[:20]


def respond(state: State, config: RunnableConfig, runtime: Runtime[Context] | None = None, *,
            engine: Engine) -> dict[str, Any]:
    """One LLM call on the hot path. Side effects only after the reply: the audit log and profile, then vector
    memory (or, under MemChat, ``outbox``: MemChat writes it after the checkpoint, so a failed turn leaves none)."""
    eng = engine
    tid, uid = thread_id(config), user_id(state, config, runtime)
    turn = int(state.get("turn") or 0) + 1
    human = current_message(state)
    message = text_of(human)
    turns = l0_turns(state)
    if state.get("memory_rebase"):
        turns = [t.bare() for t in turns]
    head = state.get("head") or {}
    head_text = render_head(head.get("persona") or eng.settings.persona, head.get("slots") or {}, head.get("l2"))
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")  # the turn's date and time, shown in the tail
    notes = [n for n in (_describe(e) for e in state.get("slot_changes") or [] if not e.get("in_head")) if n]
    asm = assemble(settings=eng.settings, budget=eng.budget, head=head_text, l1=state.get("l1") or [],
                   turns=turns, message=with_context(message, request_context(config, runtime)),
                   memories=list(state.get("retrieved") or []), notes=notes, now=date)
    if asm.rebased:
        turns = [t.bare() for t in turns]
    t0 = time.perf_counter()
    chunks, ttft = _generate(eng, asm.messages, run_context(config, runtime).get("llm_params"))
    reply_text = text_of(chunks) if chunks is not None else ""
    usage = dict(chunks.usage_metadata or {}) if chunks is not None and chunks.usage_metadata else {}
    reply = AIMessage(content=reply_text, id=f"ai:{tid}:{turn}", usage_metadata=chunks.usage_metadata if chunks else None,
                      response_metadata={"turn": turn})
    cached = cached_tokens(reply)
    prev = state.get("context") or {}
    reuse = prefix_reuse(eng.budget, prev.get("messages"), prev.get("reply"), asm.messages) if prev else 0.0
    conf = (config or {}).get("configurable") or {}
    docs = _side_effects(eng, runtime, state, tid, uid, turn, message, reply_text, date,
                         defer=bool(conf.get("defer_memory")))
    metas: list[TurnMeta] = [TurnMeta(turn=t.turn, memories=t.memories, notes=t.notes, date=t.date)
                             for t in turns]
    metas.append(TurnMeta(turn=turn, memories=asm.memories, notes=notes, date=date))
    prompt_tokens = int(usage.get("input_tokens") or asm.sections["total"])  # type: ignore[call-overload]
    counters = {"turns": 1, "llm_calls_respond": 1, "prompt_tokens": prompt_tokens,
                "cached_tokens": int(cached or 0)}
    return {
        "messages": [reply],
        "turn": turn,
        "l0_meta": metas,
        "candidates": [],
        "pending_facts": [],
        "memory_rebase": False,
        "context": {
            "turn": turn, "messages": asm.messages, "reply": reply_text, "sections": asm.sections,
            "cached_tokens": cached, "prefix_reuse": round(reuse, 4), "ttft_s": ttft,
            "latency_s": round(time.perf_counter() - t0, 4), "usage": usage,
            "dropped_turns": asm.dropped_turns, "rebased": asm.rebased, "truncated": asm.truncated_message,
            "retrieved_ids": [m.get("id") for m in asm.memories],
        },
        "counters": counters,
        "outbox": [asdict(d) for d in docs] if conf.get("defer_memory") else [],
        **_receipt(state, conf.get("receipt"), eng.settings.idempotency_keys, reply_text, turn, usage, cached,
                   asm.sections, asm.dropped_turns, reuse, asm.memories),
    }


def _generate(eng: Engine, messages: list[dict[str, str]], llm_params: dict[str, Any] | None
              ) -> tuple[AIMessageChunk | None, float | None]:
    """The one LLM call of the turn, streamed (tagged ``memchat:respond``): the reply and its time to first token."""
    llm = eng.llm
    params = generation_params(eng.settings, llm_params)
    if params:
        llm = llm.bind(**params)  # type: ignore[assignment]
    t0 = time.perf_counter()
    ttft: float | None = None
    chunks: AIMessageChunk | None = None
    eng.metrics.inc("llm_calls_respond")
    try:
        for chunk in llm.stream(to_lc(messages), config={"tags": ["memchat:respond"]}):
            if ttft is None and chunk.content:
                ttft = time.perf_counter() - t0
            chunks = chunk if chunks is None else chunks + chunk  # type: ignore[assignment]
    except Exception as exc:
        eng.metrics.inc("llm_failures")
        raise classify_error(exc) from exc
    return chunks, ttft


def _side_effects(eng: Engine, runtime: Any, state: State, tid: str, uid: str, turn: int, message: str,
                  reply_text: str, date: str, *, defer: bool) -> list[MemoryDoc]:
    """Everything the turn writes besides its state, after the reply, with idempotent ids (a retried turn never
    duplicates): the user's profile and audit log in the store, then vector memory, unless deferred (MemChat
    writes the returned docs, the ``outbox``, once the checkpoint is saved)."""
    _write_profile(getattr(runtime, "store", None), state, tid, uid, turn)
    docs = _memory_docs(state, tid, uid, turn, message, reply_text, date)
    if not defer:
        eng.store_docs(docs)
    return docs


def _memory_docs(state: State, tid: str, uid: str, turn: int, message: str, reply_text: str,
                 date: str) -> list[MemoryDoc]:
    """The turn's vector memories: both messages (thread-scoped) and the user's free facts."""
    docs = [
        MemoryDoc(id=msg_id(tid, 2 * turn - 1), text=message, user_id=uid, thread_id=tid, kind="turn", speaker="user",
                  turn=turn, seq=2 * turn - 1, date=date),
        MemoryDoc(id=msg_id(tid, 2 * turn), text=reply_text, user_id=uid, thread_id=tid, kind="turn",
                  speaker="assistant", turn=turn, seq=2 * turn, date=date),
    ]
    # facts: only statements that carry one (no chit-chat such as "好的，我考虑一下。")
    facts = [f for f in free_facts(message) if carries_fact(f)] + [str(p["text"]) for p in state.get("pending_facts") or []]
    docs += [MemoryDoc(id=fact_id(uid, f), text=f, user_id=uid, thread_id=tid, kind="fact", speaker="user", turn=turn,
                       date=date, scope="user") for f in dict.fromkeys(facts)]
    return docs


def _write_profile(store: Any, state: State, tid: str, uid: str, turn: int) -> None:
    """The slot audit log and the user's cross-thread profile (idempotent keys)."""
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


def _receipt(state: State, request: Any, keep: int, reply: str, turn: int, usage: dict[str, Any], cached: Any,
             sections: dict[str, Any], dropped: Any, reuse: float, memories: list[dict[str, Any]]
             ) -> dict[str, Any]:
    """``{"receipts": [...]}`` with this turn's result when it was sent with an idempotency key."""
    if not isinstance(request, dict) or not request.get("key"):
        return {}
    result = {"reply": reply, "turn": turn, "usage": usage, "cached_tokens": cached,
              "context": {"sections": sections, "dropped_turns": dropped, "prefix_reuse": round(reuse, 4),
                          "retrieved_ids": [m.get("id") for m in memories]}}
    return {"receipts": add_receipt(state.get("receipts") or [], {**request, **result}, keep)}


def _describe(ev: dict[str, Any]) -> str:
    from memchat.memory.slots import describe_change

    return describe_change(ev)
