"""Fast extraction rules (zero LLM calls) for explicit statements in English and Chinese."""

from __future__ import annotations

import re

from memchat.memory import rules_en as en
from memchat.memory import rules_zh as zh
from memchat.memory.rules_en_asks import forget_requests_en
from memchat.memory.rules_en_asks import instructions as en_instructions
from memchat.memory.rules_en_asks import tasks as en_tasks
from memchat.memory.rules_guard import (
    before_condition,
    clauses,
    is_correction,
    is_hypothetical,
    is_question,
    is_reported,
    normalize,
    strip_lead,
    strip_quotes,
    subject,
)
from memchat.memory.rules_words import MULTI_KEYS
from memchat.memory.rules_zh_asks import forget_requests_zh
from memchat.memory.rules_zh_asks import instructions as zh_instructions
from memchat.memory.rules_zh_asks import tasks as zh_tasks
from memchat.memory.slot_ops import Candidate, clean
from memchat.memory.textproc import has_cjk

__all__ = ["KINDS", "Candidate", "extract_rules", "forget_requests", "free_facts", "sentences"]

KINDS = ("instruction", "preference", "fact", "task")
_POLITE = re.compile(r"^(?:can|could|would|will) you\b|^(?:please|请|麻烦|帮我|能不能|可以)", re.I)


def sentences(text: str) -> list[str]:
    """Split into sentences (English and Chinese punctuation)."""
    parts = re.split(r"(?<=[.!?;])\s+|(?<=[。！？；])\s*|\n+", text)
    return [p.strip() for p in parts if p and p.strip()]


def _clause_ops(cl: str, inherited: str) -> list[Candidate]:
    body = strip_lead(cl)
    if has_cjk(body):
        return (zh.names(body, inherited) + zh.places(body, inherited) + zh.allergies_diet(body, inherited)
                + zh.contacts(body, inherited) + zh.work(body, inherited) + zh.birthday(body, inherited)
                + zh.ids(body, inherited) + zh_instructions(body) + zh_tasks(body, inherited))
    return (en.names(body) + en.places(body) + en.allergies_diet(body) + en.contacts(body) + en.ids(body)
            + en.work(body) + en.birthday(body) + en_instructions(body) + en_tasks(body))


def sentence_ops(sent: str, corrective: bool = False) -> list[Candidate]:
    """The slot operations one user sentence supports (none for questions, hypotheticals, quotes)."""
    s = normalize(strip_quotes(sent))
    forget = forget_requests_en(s) if not has_cjk(s) else forget_requests_zh(s)
    if forget and (not is_question(s) or _POLITE.search(s)):
        return forget
    if is_hypothetical(s):
        s = before_condition(s)
    if not s or is_question(s) or is_hypothetical(s) or is_reported(s):
        return []
    ops = [] if has_cjk(s) else en.sentence_level(s)
    subj = "1"
    for cl in clauses(s):
        subj = subject(cl) or subj
        if subj == "3":
            continue
        ops += _clause_ops(cl, subj)
    if corrective or is_correction(s):
        for op in ops:
            if op.op == "set" and op.key.split(":", 1)[1] in MULTI_KEYS:
                op.op = "correct"
    for op in ops:
        op.evidence = sent.strip()
    return ops


def extract_rules(text: str, source: str = "user") -> list[Candidate]:
    """Slot operations from explicit statements. Only the user's own words count (``source``)."""
    if source != "user":
        return []  # the assistant's words never become facts about the user
    out: list[Candidate] = []
    seen: set[tuple[str, str, str]] = set()
    corrective = False
    for sent in sentences(text):
        corrective = corrective or is_correction(normalize(sent))
        for op in sentence_ops(sent, corrective):
            op.value = clean(op.value)
            sig = (op.op, op.key, op.value.lower())
            if sig in seen or (not op.value and op.op in ("set", "correct")) or len(op.value) > 200:
                continue
            seen.add(sig)
            out.append(op)
    return out


def forget_requests(text: str) -> list[str]:
    """What the user asked to forget ("forget my order number" -> ["order number"])."""
    names = [re.sub(r"^(?:my|the|about my|我的|我)\s*", "", c.value, flags=re.I) for c in extract_rules(text)
             if c.op == "forget"]
    return list(dict.fromkeys(names))


_FIRST_PERSON = re.compile(r"\b(?:i|i'm|i've|i'd|my|me|we|our)\b|我", re.I)


def free_facts(text: str) -> list[str]:
    """First-person declarative sentences worth storing as facts in vector memory."""
    out = []
    for s in sentences(text):
        if s.endswith(("?", "？")) or len(s) < 8:
            continue
        if _FIRST_PERSON.search(s):
            out.append(s)
    return out[:5]
