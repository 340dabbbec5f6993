"""Stateless chat (no thread): memchat's memory techniques applied within the messages of one request.

The earlier user/assistant pairs become :class:`memchat.memory.prompt.Turn` objects. When they do not fit the
prompt budget, the oldest ones overflow, in blocks of ``l0_turns`` so that the prompt prefix stays stable
for several requests (prefix caches keep hitting). The overflow is

* summarized extractively into L1 lines (``memchat.nodes.summarize.fallback_summary``, no LLM call),
* scanned for anchored slots with the rules tier (shown in the head), and
* searched with BM25 for the new message (the hits go into the memory block of the tail).

Then one LLM call answers. Without a user nothing is stored; with one, ``memchat.server.user_memory`` uses and
updates that user's long-term memory (profile slots, vector memory).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from langchain_core.messages import AIMessageChunk

from memchat.backends.bm25 import BM25Index
from memchat.backends.engine import Engine
from memchat.backends.generate import stream_reply
from memchat.backends.llm import cached_tokens
from memchat.memory.prompt import Assembled, Turn, assemble, memory_line, render_head, render_l1
from memchat.memory.rules import extract_rules
from memchat.memory.slots import apply_operations, keep_grounded
from memchat.memory.textproc import tokenize
from memchat.nodes.common import text_of, with_context
from memchat.nodes.summarize import fallback_summary

SUMMARY_CHARS = 160
MAX_PASSES = 8
SECTION_SHARE = 4  # L1 lines and recalled memories get at most 1/4 of the prompt budget each


@dataclass
class StatelessPrompt:
    """The prompt built for a stateless request and what the memory techniques did."""

    messages: list[dict[str, str]]
    sections: dict[str, int]
    turns: int
    summarized_turns: int = 0
    dropped_turns: int = 0
    slots: dict[str, Any] = field(default_factory=dict)
    l1: list[dict[str, Any]] = field(default_factory=list)
    retrieved: list[dict[str, Any]] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        """What to report in the response's ``memchat`` field."""
        return {"thread_id": None, "history_turns": self.turns, "summarized_turns": self.summarized_turns,
                "dropped_turns": self.dropped_turns, "slots": sorted(self.slots),
                "retrieved": len(self.retrieved), "sections": self.sections}


def pair_turns(history: list[tuple[str, str]]) -> list[Turn]:
    """Group (role, text) history into turns; consecutive user messages are joined."""
    turns: list[Turn] = []
    users: list[str] = []
    for role, text in history:
        if role == "user":
            users.append(text)
        else:
            turns.append(Turn(turn=len(turns) + 1, user="\n\n".join(users), assistant=text))
            users = []
    if users:  # user messages never answered: keep them as a turn with an empty reply
        turns.append(Turn(turn=len(turns) + 1, user="\n\n".join(users), assistant=""))
    return turns


def overflow_l1(turns: list[Turn], block: int) -> list[dict[str, Any]]:
    """Extractive L1 lines, one per block of overflowed turns."""
    lines = []
    for i in range(0, len(turns), block):
        part = turns[i:i + block]
        text = fallback_summary([t.user for t in part], max_chars=SUMMARY_CHARS)
        if text:
            lines.append({"from_turn": part[0].turn, "to_turn": part[-1].turn, "text": text})
    return lines


def overflow_slots(engine: Engine, turns: list[Turn], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Anchored slots from the user's explicit statements in the overflowed turns (rules tier), applied
    over ``base`` (a user's profile)."""
    slots: dict[str, Any] = dict(base or {})
    for t in turns:
        cands = keep_grounded([c.as_dict() for c in extract_rules(t.user, "user")])
        slots, _ = apply_operations(slots, cands, settings=engine.settings, thread_id="-", user_id="-", turn=t.turn)
    return slots


def _cap(items: list[dict[str, Any]], cost: Any, cap: int, *, keep_newest: bool) -> list[dict[str, Any]]:
    """The items that fit ``cap`` tokens: the newest (L1 lines) or the first, i.e. best (memories)."""
    order = list(reversed(items)) if keep_newest else list(items)
    out, used = [], 0
    for it in order:
        c = cost(it)
        if used + c > cap:
            break
        out.append(it)
        used += c
    return list(reversed(out)) if keep_newest else out


def bm25_recall(turns: list[Turn], query: str, top_k: int) -> list[dict[str, Any]]:
    """BM25 over the overflowed messages; the best ``top_k`` hits, best first."""
    docs: list[dict[str, Any]] = []
    for t in turns:
        for speaker, text, seq in (("user", t.user, 2 * t.turn - 1), ("assistant", t.assistant, 2 * t.turn)):
            toks = tokenize(text)
            if toks:
                docs.append({"id": f"msg:{seq}", "text": text, "speaker": speaker, "kind": "turn",
                             "turn": t.turn, "seq": seq, "tokens": toks})
    q = tokenize(query)
    if not docs or not q or top_k <= 0:
        return []
    index = BM25Index()  # the one BM25 (memchat.backends.bm25), as vector memory's sparse retriever uses
    for d in docs:
        index.add(d["tokens"])
    scores = index.scores(q)
    hits = []
    for i in np.argsort(-scores, kind="stable")[:top_k]:
        if float(scores[i]) > 0:
            d = {k: v for k, v in docs[int(i)].items() if k != "tokens"}
            d["score"] = round(float(scores[i]), 5)
            hits.append(d)
    return hits


Recall = Callable[[list[Turn], list[Turn], int], list[dict[str, Any]]]


def build_prompt(engine: Engine, persona: str, history: list[tuple[str, str]], message: str, *,
                 base_slots: Callable[[list[Turn]], dict[str, Any]] | None = None, recall: Recall | None = None,
                 context: str | None = None) -> StatelessPrompt:
    """Trim to the budget, summarize / mine / search the overflow, and assemble the prompt.

    With a user (see ``memchat.server.user_memory``): ``base_slots(verbatim turns)`` gives the user's profile slots
    for the head and ``recall(overflow, verbatim, budget)`` searches the user's vector memory (on every
    pass, overflow or not) instead of BM25 over the overflow. ``context`` goes into the tail only."""
    s = engine.settings
    turns = pair_turns(history)
    block = max(1, s.l0_turns)
    share = s.prompt_limit // SECTION_SHARE
    count = engine.tokenizer.count
    tail = with_context(message, context or "")
    k = 0  # turns moved to the overflow
    slots: dict[str, Any] = base_slots(turns) if base_slots else {}
    l1: list[dict[str, Any]] = []
    memories = recall([], turns, min(share, s.memory_tokens)) if recall else []
    asm: Assembled | None = None
    for _ in range(MAX_PASSES):
        head = render_head(persona, slots, None)
        asm = assemble(settings=s, budget=engine.budget, head=head, l1=l1, turns=turns[k:], message=tail,
                       memories=memories, notes=[])
        if not asm.dropped_turns or k >= len(turns):
            break
        # grow the overflow in whole blocks, so the prefix only changes every `block` turns
        k = min(len(turns), -(-(k + asm.dropped_turns) // block) * block)
        over = turns[:k]
        slots = overflow_slots(engine, over, base_slots(turns[k:]) if base_slots else None)
        l1 = _cap(overflow_l1(over, block), lambda b: count(render_l1([b])), share, keep_newest=True)
        if recall:
            memories = recall(over, turns[k:], min(share, s.memory_tokens))
            continue
        hits = bm25_recall(over, message, s.memory_top_k)
        memories = _cap(hits, lambda m: count(memory_line(m)) + 1, min(share, s.memory_tokens), keep_newest=False)
        memories.sort(key=lambda m: m["seq"])  # shown in conversation order
    assert asm is not None
    return StatelessPrompt(messages=asm.messages, sections=asm.sections, turns=len(turns), summarized_turns=k,
                           dropped_turns=asm.dropped_turns, slots=slots, l1=l1, retrieved=asm.memories)


@dataclass
class StatelessResult:
    """The end of a stateless answer: usage figures."""

    reply: str
    usage: dict[str, Any]
    cached_tokens: int | None


def stream_answer(engine: Engine, prompt: StatelessPrompt, llm_params: dict[str, Any]
                  ) -> Iterator[str | StatelessResult]:
    """One LLM call: yield reply tokens, then a :class:`StatelessResult`."""
    total: AIMessageChunk | None = None
    for chunk in stream_reply(engine, prompt.messages, llm_params, kind="stateless"):
        total = chunk if total is None else total + chunk  # type: ignore[assignment]
        text = text_of(chunk)
        if text:
            yield text
    reply = text_of(total) if total is not None else ""
    usage = dict(total.usage_metadata or {}) if total is not None and total.usage_metadata else {}
    yield StatelessResult(reply=reply, usage=usage, cached_tokens=cached_tokens(total) if total else None)
