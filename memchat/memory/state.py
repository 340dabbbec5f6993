"""The one state definition of a memchat thread."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict  # pydantic (Studio's input schema) needs it on Python < 3.12


def merge_counters(left: dict[str, int] | None, right: dict[str, int] | None) -> dict[str, int]:
    """Add counters (LLM calls by kind, failures) across nodes and turns."""
    out = dict(left or {})
    for k, v in (right or {}).items():
        out[k] = out.get(k, 0) + int(v)
    return out


class Slot(TypedDict, total=False):
    """An anchored slot: typed, with provenance and expiry."""

    key: str  # "fact:name", "instruction:tone", "task:current" ...
    kind: str  # instruction | preference | fact | task
    value: str
    source: str  # user | assistant | llm
    evidence: str  # the text that supports it
    thread_id: str
    user_id: str
    turn: int  # turn that set it
    last_seen_turn: int  # last turn that mentioned it (refreshes expiry)
    time: float
    expires_turn: int | None
    expires_at: float | None
    origin: str  # "from an earlier conversation, 2026-11-30" when carried from another thread


class TurnMeta(TypedDict, total=False):
    """Per-turn tail kept verbatim while the turn is in L0 (so the prompt stays append-only)."""

    turn: int
    memories: list[dict[str, Any]]  # retrieved items shown with this turn's message
    notes: list[str]  # slot changes announced with this turn's message
    date: str


class State(TypedDict, total=False):
    """State of one conversation thread.

    ``messages`` holds only the verbatim window (L0, plus the new message); older turns live in
    L1/L2 summaries and in vector memory, so the checkpoint stays bounded.
    """

    messages: Annotated[list[AnyMessage], add_messages]
    user_id: str
    persona: str | None
    turn: int  # completed turns
    slots: dict[str, Slot]
    slot_log: list[dict[str, Any]]  # audit history (newest last, bounded)
    slot_candidates: list[dict[str, Any]]  # slot operations extracted from this turn's message
    slot_changes: list[dict[str, Any]]  # applied this turn
    frozen_head: dict[str, Any]  # the prompt head as frozen: persona, slots snapshot, l2 (changes only at compaction)
    l1: list[dict[str, Any]]  # {"from_turn", "to_turn", "text"}
    l2: dict[str, Any] | None
    l2_requested: bool
    l0_shown: list[TurnMeta]  # what each verbatim (L0) turn was sent with: recalled memories, slot notes, date
    retrieved: list[dict[str, Any]]
    drop_shown_memories: bool  # this prompt re-sends the L0 turns without the memory blocks shown with them
    llm_facts_to_store: list[dict[str, Any]]  # LLM-extracted facts waiting to be stored with the next turn
    last_prompt: dict[str, Any]  # the last prompt's figures: token counts per section, cache, latency
    outbox: list[dict[str, Any]]  # vector memories not yet known written (the last turn's, and earlier ones while the store was down)
    receipts: list[dict[str, Any]]  # results of the last turns sent with an idempotency key (bounded)
    # checkpoints written before these keys were renamed: read once by upgrade_state, then cleared
    head: dict[str, Any] | None
    l0_meta: list[TurnMeta] | None
    memory_rebase: bool | None
    pending_facts: list[dict[str, Any]] | None
    candidates: list[dict[str, Any]] | None
    context: dict[str, Any] | None
    counters: Annotated[dict[str, int], merge_counters]


class Context(TypedDict, total=False):
    """Per-run values (LangGraph ``context_schema``): who is talking and how to answer, never stored in state."""

    user_id: str  # the user whose profile and facts this turn reads and writes
    persona: str  # system persona for this run (else the thread's, else the configured default)
    llm_params: dict[str, Any]  # generation parameters for the reply (temperature, max_tokens, ...)
    request_context: str  # this request only: rendered in the prompt's tail, never stored


RENAMED = {"head": "frozen_head", "l0_meta": "l0_shown", "memory_rebase": "drop_shown_memories",
           "pending_facts": "llm_facts_to_store", "candidates": "slot_candidates", "context": "last_prompt"}


def upgrade_state(values: Mapping[str, Any]) -> dict[str, Any]:
    """The update that moves a checkpoint's values from the old key names (before the renames in
    :data:`RENAMED`) to the new ones and clears the old; empty for a current checkpoint."""
    update: dict[str, Any] = {}
    for old, new in RENAMED.items():
        if values.get(old) is not None:
            if values.get(new) is None:
                update[new] = values[old]
            update[old] = None
    return update


def current_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """A state's values as the current keys name them (old checkpoints read through :func:`upgrade_state`)."""
    out = {**values, **upgrade_state(values)}
    return {k: v for k, v in out.items() if k not in RENAMED}
