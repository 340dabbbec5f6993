"""Prompt assembly for a prefix cache (SGLang RadixAttention, llama.cpp KV reuse).

Layout, most stable first:

1. **frozen head** (system): persona, anchored slots, L2 JSON — rebuilt only at compaction and only
   when slots or L2 changed;
2. **append-only middle**: L1 summary lines, then the verbatim L0 turns, each user turn rendered with
   the memory block and slot notes it was first sent with (so the previous prompt plus its reply is a
   prefix of the next one); compacted in steps, never shifted turn by turn;
3. **volatile tail**: retrieved memories, slot changes since the last compaction, the new message.

A hard token budget is enforced last: the prompt never exceeds ``Settings.prompt_limit``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from memchat.memory.counting import TokenCounter
from memchat.memory.recall_policy import now_text
from memchat.memory.slots import render_slots
from memchat.prompts import load_prompt
from memchat.settings import Settings

Message = dict[str, str]


@dataclass
class Turn:
    """A completed verbatim turn with the tail it was sent with."""

    turn: int
    user: str
    assistant: str
    memories: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    date: str = ""  # when it was sent (``%Y-%m-%d %H:%M`` UTC), shown with it

    def bare(self) -> Turn:
        """The same turn without its memory block (a rebase)."""
        return replace(self, memories=[])


@dataclass
class Assembled:
    """The prompt, its token counts per section, and what the budget forced."""

    messages: list[Message]
    sections: dict[str, int]
    memories: list[dict[str, Any]]
    dropped_turns: int = 0
    dropped_l1: int = 0
    rebased: bool = False
    truncated_message: bool = False


def render_head(persona: str, slots: dict[str, Any], l2: dict[str, Any] | None) -> str:
    """The frozen head text."""
    l2_text = json.dumps(l2, ensure_ascii=False, sort_keys=True) if l2 else "(none yet)"
    return load_prompt("head").format(persona=persona.strip(), slots=render_slots(slots), l2=l2_text).strip()


def render_l1(l1: list[dict[str, Any]]) -> str:
    """The L1 block: one line per folded block of turns."""
    lines = [f"- turns {b['from_turn']}–{b['to_turn']}: {b['text']}" for b in l1]
    return load_prompt("l1_header").strip() + "\n" + "\n".join(lines)


_BLOCK_TAG = re.compile(r"<\s*(/?)\s*(memory(?:-update)?|now)\s*>", re.IGNORECASE)


def memory_line(item: dict[str, Any]) -> str:
    """One retrieved memory as a quoted data line (a ``</memory>`` inside it cannot close the block)."""
    date = f"[{item['date']}] " if item.get("date") else ""
    who = item.get("speaker") or item.get("kind") or "memory"
    text = _BLOCK_TAG.sub(r"‹\1\2›", " ".join(str(item.get("text", "")).split()))
    return f"- {date}{who}: {text}"


def render_tail(message: str, memories: list[dict[str, Any]], notes: list[str], now: str = "") -> str:
    """A user turn with its memory block, slot notes and date/time (``now``) in front of the message."""
    parts = []
    if memories:
        body = "\n".join(memory_line(m) for m in memories)
        parts.append(load_prompt("memory_block").strip().format(memories=body))
    if notes:
        parts.append(load_prompt("slot_updates").strip().format(notes="\n".join(f"- {n}" for n in notes)))
    if now:
        parts.append(f"<now>{now_text(now)}</now>")
    parts.append(message)
    return "\n\n".join(parts)


class Budget:
    """Counts tokens of chat messages as a ChatML template renders them (Qwen's)."""

    def __init__(self, tok: TokenCounter) -> None:
        self.tok = tok
        self._count = lru_cache(maxsize=8192)(self._count_chunk)
        self._ids = lru_cache(maxsize=4096)(self._ids_chunk)

    @staticmethod
    def chunk(m: Message) -> str:
        return f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"

    def _count_chunk(self, text: str) -> int:
        return self.tok.count(text)

    def _ids_chunk(self, text: str) -> tuple[int, ...]:
        return tuple(self.tok.encode(text))

    def message(self, m: Message) -> int:
        """Tokens of one rendered message."""
        return self._count(self.chunk(m))

    def messages(self, ms: list[Message]) -> int:
        """Tokens of a whole prompt including the generation prompt."""
        return sum(self.message(m) for m in ms) + self._count("<|im_start|>assistant\n")

    def ids(self, ms: list[Message], reply: str | None = None) -> list[int]:
        """Token ids of a rendered prompt (optionally followed by the reply it got)."""
        out: list[int] = []
        for m in ms:
            out.extend(self._ids(self.chunk(m)))
        if reply is not None:
            out.extend(self._ids("<|im_start|>assistant\n" + reply))
        return out


def prefix_reuse(budget: Budget, prev: list[Message] | None, prev_reply: str | None, cur: list[Message]) -> float:
    """Share of the current prompt's tokens equal to a prefix of the previous prompt plus its reply."""
    cur_ids = budget.ids(cur)
    if not prev or not cur_ids:
        return 0.0
    prev_ids = budget.ids(prev, prev_reply or "")
    n = 0
    for a, b in zip(prev_ids, cur_ids):
        if a != b:
            break
        n += 1
    return n / len(cur_ids)


def fold_system(messages: list[Message]) -> list[Message]:
    """For templates without a system role: put the system text in front of the first user message."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], messages[1:]
    if rest and rest[0]["role"] == "user":
        return [{"role": "user", "content": system + "\n\n" + rest[0]["content"]}] + rest[1:]
    return [{"role": "user", "content": system}] + rest


def assemble(
    *, settings: Settings, budget: Budget, head: str, l1: list[dict[str, Any]], turns: list[Turn], message: str,
    memories: list[dict[str, Any]], notes: list[str], limit: int | None = None, now: str = "",
) -> Assembled:
    """Build the prompt and enforce the hard budget (``limit`` defaults to ``settings.prompt_limit``)."""
    limit = settings.prompt_limit if limit is None else limit
    res = Assembled(messages=[], sections={}, memories=list(memories))
    d = _Draft(budget, head, list(l1), list(turns), message, notes, now)
    # memory section cap: sticky blocks of L0 turns + the new block
    sticky = sum(d.mem_tokens(t.memories) for t in d.turns)
    mem_cap = settings.memory_tokens
    if sticky + d.mem_tokens(res.memories) > mem_cap:
        res.rebased = sticky > 0 and sticky > mem_cap // 2
        if res.rebased:
            d.turns = [t.bare() for t in d.turns]
            sticky = 0
        res.memories = _fit(res.memories, mem_cap - sticky, d.mem_tokens)
    ms, total = _within(d, res, limit)
    if settings.llm_fold_system:
        ms = fold_system(ms)
        total = budget.messages(ms)
    res.messages = ms
    head_t = budget.message(ms[0]) if ms and ms[0]["role"] == "system" else 0
    mem_t = sum(d.mem_tokens(t.memories) for t in d.turns) + d.mem_tokens(res.memories)
    tail_t = budget.message(ms[-1]) + budget._count("<|im_start|>assistant\n")
    res.sections = {"head": head_t, "middle": total - head_t - tail_t, "memory": mem_t, "tail": tail_t,
                    "total": total, "limit": limit}
    return res


@dataclass
class _Draft:
    """The prompt's parts while :func:`assemble` fits them to the budget."""

    budget: Budget
    head: str
    l1: list[dict[str, Any]]
    turns: list[Turn]
    message: str
    notes: list[str]
    now: str

    def mem_tokens(self, items: list[dict[str, Any]]) -> int:
        return sum(self.budget.tok.count(memory_line(m)) + 1 for m in items)

    def build(self, memories: list[dict[str, Any]]) -> tuple[list[Message], int]:
        """The messages with these new memories, and their token count."""
        ms: list[Message] = [{"role": "system", "content": self.head}]
        if self.l1:
            ms.append({"role": "user", "content": render_l1(self.l1)})
            ms.append({"role": "assistant", "content": load_prompt("l1_ack").strip()})
        for t in self.turns:
            ms.append({"role": "user", "content": render_tail(t.user, t.memories, t.notes, t.date)})
            ms.append({"role": "assistant", "content": t.assistant})
        ms.append({"role": "user", "content": render_tail(self.message, memories, self.notes, self.now)})
        return ms, self.budget.messages(ms)


def _within(d: _Draft, res: Assembled, limit: int) -> tuple[list[Message], int]:
    """Fit the prompt to ``limit``: 1) drop sticky memory blocks, 2) drop oldest verbatim turns, 3) oldest L1
    lines, 4) shrink memories, 5) truncate a long head, 6) truncate the message itself (a visible marker)."""
    ms, total = d.build(res.memories)
    if total > limit and any(t.memories for t in d.turns):
        d.turns = [t.bare() for t in d.turns]
        res.rebased = True
        ms, total = d.build(res.memories)
    while total > limit and d.turns:
        d.turns.pop(0)
        res.dropped_turns += 1
        ms, total = d.build(res.memories)
    while total > limit and d.l1:
        d.l1.pop(0)
        res.dropped_l1 += 1
        ms, total = d.build(res.memories)
    while total > limit and res.memories:
        res.memories = res.memories[: len(res.memories) // 2] if len(res.memories) > 1 else []
        ms, total = d.build(res.memories)
    if total > limit:
        over = total - limit
        head_tokens = d.budget.message({"role": "system", "content": d.head})
        if head_tokens > limit // 2:
            d.head = d.budget.tok.truncate(d.head, max(16, head_tokens - over))
            ms, total = d.build(res.memories)
    if total > limit:
        over = total - limit
        msg_tokens = d.budget.tok.count(d.message)
        d.message = d.budget.tok.truncate(d.message, max(0, msg_tokens - over - 8))
        res.truncated_message = True
        ms, total = d.build(res.memories)
    return ms, total


def _fit(items: list[dict[str, Any]], cap: int, measure: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    used = 0
    for it in items:
        t = measure([it])
        if used + t > cap:
            continue
        out.append(it)
        used += t
    return out
