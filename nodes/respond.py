"""Node 5: assemble the prefix-stable prompt within budget, stream the reply, persist memories."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer
from langgraph.runtime import Runtime

from memchat.backends.engine import Engine
from memchat.backends.extraction import turn_key
from memchat.backends.generate import stream_reply, to_lc
from memchat.backends.llm import cached_tokens
from memchat.backends.memory_api import fact_id, memory_docs, write_profile
from memchat.backends.vectorstore import MemoryDoc
from memchat.memory.prompt import prefix_reuse
from memchat.memory.receipts import add_receipt
from memchat.memory.state import Context, State, TurnMeta
from memchat.nodes.common import current_message, run_context, text_of, thread_id, turn_prompt, user_id

__all__ = ["fact_id", "respond", "to_lc"]
PASS_THROUGH = ("max_tokens", "temperature", "top_p", "stop", "response_format", "seed")


def respond(state: State, config: RunnableConfig, runtime: Runtime[Context] | None = None, *,
            engine: Engine) -> dict[str, Any]:
    """One LLM call on the hot path. Side effects only after the reply: the audit log and profile, then vector
    memory (or, under MemChat, ``outbox``: MemChat writes it after the checkpoint, so a failed turn leaves none)."""
    eng = engine
    tid, uid = thread_id(config), user_id(state, config, runtime)
    turn = int(state.get("turn") or 0) + 1
    message = text_of(current_message(state))
    asm, turns, notes, date = turn_prompt(state, config, eng, runtime)
    t0 = time.perf_counter()
    chunks, ttft = _generate(eng, asm.messages, run_context(config, runtime).get("llm_params"))
    reply_text = text_of(chunks) if chunks is not None else ""
    usage = dict(chunks.usage_metadata or {}) if chunks is not None and chunks.usage_metadata else {}
    # the stored reply keeps the id its streamed chunks carried, so stream_mode="messages" shows it once
    reply = AIMessage(content=reply_text, id=(chunks.id if chunks is not None and chunks.id else f"ai:{tid}:{turn}"),
                      usage_metadata=chunks.usage_metadata if chunks else None, response_metadata={"turn": turn})
    cached = cached_tokens(reply)
    conf = (config or {}).get("configurable") or {}
    prev = conf.get("prev_context") or state.get("last_prompt") or {}  # MemChat passes the last turn's view
    reuse = prefix_reuse(eng.budget, prev.get("messages"), prev.get("reply"), asm.messages) if prev else 0.0
    docs = _side_effects(eng, runtime, state, tid, uid, turn, message, reply_text, date,
                         defer=bool(conf.get("defer_memory")))
    metas: list[TurnMeta] = [TurnMeta(turn=t.turn, memories=t.memories, notes=t.notes, date=t.date)
                             for t in turns]
    metas.append(TurnMeta(turn=turn, memories=asm.memories, notes=notes, date=date))
    prompt_tokens = int(usage.get("input_tokens") or asm.sections["total"])  # type: ignore[call-overload]
    context = {
        "turn": turn, "messages": asm.messages, "reply": reply_text, "sections": asm.sections,
        "cached_tokens": cached, "prefix_reuse": round(reuse, 4), "ttft_s": ttft,
        "latency_s": round(time.perf_counter() - t0, 4), "usage": usage,
        "dropped_turns": asm.dropped_turns, "rebased": asm.rebased, "truncated": asm.truncated_message,
        "retrieved_ids": [m.get("id") for m in asm.memories],
    }
    return {
        "messages": [reply], "turn": turn, "l0_shown": metas, "slot_candidates": [], "llm_facts_to_store": [],
        "drop_shown_memories": False,
        **views_update(tid, context, list(state.get("retrieved") or []), conf),
        "counters": {"turns": 1, "llm_calls_respond": 1, "prompt_tokens": prompt_tokens,
                     "cached_tokens": int(cached or 0)},
        "outbox": _outbox(state, docs, bool(conf.get("outbox_carry"))) if conf.get("defer_memory") else [],
        **_receipt(state, conf.get("receipt"), eng.settings.idempotency_keys, reply_text, turn, usage, cached,
                   asm.sections, asm.dropped_turns, reuse, asm.memories),
    }


def _generate(eng: Engine, messages: list[dict[str, str]], llm_params: dict[str, Any] | None
              ) -> tuple[AIMessageChunk | None, float | None]:
    """The one LLM call of the turn (:func:`~memchat.backends.generate.stream_reply`): the reply and its time to
    first token."""
    t0 = time.perf_counter()
    ttft: float | None = None
    chunks: AIMessageChunk | None = None
    for chunk in stream_reply(eng, messages, llm_params, kind="respond"):
        if ttft is None and chunk.content:
            ttft = time.perf_counter() - t0
        chunks = chunk if chunks is None else chunks + chunk  # type: ignore[assignment]
    return chunks, ttft


def _side_effects(eng: Engine, runtime: Any, state: State, tid: str, uid: str, turn: int, message: str,
                  reply_text: str, date: str, *, defer: bool) -> list[MemoryDoc]:
    """Everything the turn writes besides its state, after the reply, with idempotent ids (a retried turn never
    duplicates): the user's profile and audit log in the store, then vector memory, unless deferred (MemChat
    writes the returned docs, the ``outbox``, once the checkpoint is saved)."""
    write_profile(getattr(runtime, "store", None), state, tid, uid, turn)
    docs = memory_docs(state, tid, uid, turn, message, reply_text, date)
    if not defer:
        eng.store_docs(docs)
    return docs


def _outbox(state: State, docs: list[MemoryDoc], carry: bool) -> list[dict[str, Any]]:
    """This turn's memories, after the earlier turns' still unwritten ones when ``carry`` (the vector store
    was down): the checkpoint keeps every acknowledged write until the store has it."""
    out = {d["id"]: d for d in (state.get("outbox") or []) if carry and isinstance(d, dict) and d.get("id")}
    out.update((d.id, asdict(d)) for d in docs)
    return list(out.values())


def views_update(tid: str, context: dict[str, Any], retrieved: list[dict[str, Any]],
                 conf: dict[str, Any]) -> dict[str, Any]:
    """The state's ``last_prompt`` and ``retrieved``. Under MemChat (``views_out``) the full last prompt and the
    retrievals go out on the custom stream (MemChat keeps them in one store entry per thread) and the state
    keeps a slim summary, so that checkpoints stay small; otherwise the state keeps them whole."""
    if not conf.get("views_out"):
        return {"last_prompt": context, "retrieved": retrieved}
    get_stream_writer()({"memchat_view": {"turn": context["turn"], "context": context, "retrieved": retrieved}})
    slim = {k: v for k, v in context.items() if k not in ("messages", "reply")}
    slim["extraction_key"] = turn_key(tid, context)
    return {"last_prompt": slim, "retrieved": []}


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
