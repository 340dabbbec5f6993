"""Precision guards of the rules tier: questions, hypotheticals, reported speech, quotes, third parties.

A sentence that asks, supposes, quotes or reports someone else never creates or changes a slot; a
clause whose subject is another person is skipped, and subjectless clauses inherit the subject of
the clause before them ("我是何静，在广州工作" -> both about the user).
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

from memchat.memory.rules_words import (
    CORRECTION_EN,
    CORRECTION_ZH,
    HYPOTHETICAL_EN,
    HYPOTHETICAL_ZH,
    QUESTION_CUES_EN,
    QUESTION_START_EN,
    QUESTION_ZH,
    QUOTES,
    REPORT_EN,
    REPORT_ZH,
    THIRD_EN,
    THIRD_ZH,
)
from memchat.memory.textproc import has_cjk

_LEAD_EN = re.compile(r"^(?:(?:and|but|also|so|oh|well|ok|okay|hi|hello|hey|yes|yeah|no(?=\s*[,!.])|plus|then|anyway|btw|"
                      r"by the way|wait|sorry|correction|actually|right now|now|currently|these days|"
                      r"at the moment|this week|today|update)\b[\s,:!.-]*)+", re.I)
_LEAD_ZH = re.compile(r"^(?:另外|还有|而且|并且|然后|对了|哦|嗯|啊|好的|你好|您好|其实|不过|但是|现在|目前|最近|这周|"
                      r"今年|本周|平时|一直|也|还|都|已经|更正|纠正|说错了|搞错了|不对)[\s，,：:！!]*")


@lru_cache(maxsize=1)
def _pseg() -> Any:
    import jieba
    import jieba.posseg as pseg

    jieba.setLogLevel(logging.WARNING)
    return pseg


def pos_tags(text: str) -> list[tuple[str, str]]:
    """jieba words with their part-of-speech flags."""
    return [(w.word, w.flag) for w in _pseg().cut(text)]


def normalize(text: str) -> str:
    """Unify apostrophes and spaces."""
    return " ".join(text.replace("’", "'").replace("‘", "'").split())


def strip_quotes(text: str) -> str:
    """Drop quoted spans: what a quote says is never a fact about the user."""
    return QUOTES.sub(" ", text)


def is_question(sent: str) -> bool:
    """Question marks, interrogative openings and cues, Chinese question words and particles."""
    s = sent.strip()
    if s.endswith(("?", "？")):
        return True
    if has_cjk(s):
        return bool(QUESTION_ZH.search(s))
    first = re.split(r"[\s,]+", s.lower(), maxsplit=1)[0] if s else ""
    return first in QUESTION_START_EN or bool(QUESTION_CUES_EN.search(s))


def is_hypothetical(sent: str) -> bool:
    """Conditionals and suppositions ("if", "imagine", "假如", "要是")."""
    return bool(HYPOTHETICAL_EN.search(sent) or HYPOTHETICAL_ZH.search(sent))


def before_condition(sent: str) -> str:
    """An English main clause before a trailing condition ("Email me at X if anything changes" -> "Email me
    at X"); empty when the sentence opens with the condition."""
    m = HYPOTHETICAL_EN.search(sent)
    if has_cjk(sent) or not m or m.start() == 0 or not re.search(r"[\w]", sent[: m.start()]):
        return ""
    head = sent[: m.start()].rstrip(" ,;")
    return "" if HYPOTHETICAL_EN.search(head) or re.search(r"\b(?:would|could|might|'d)\b", head, re.I) else head


def is_reported(sent: str) -> bool:
    """Someone other than the user speaks ("the captain says", "他说")."""
    for m in REPORT_EN.finditer(sent):
        if m.group("subj").lower() not in ("i", "we"):
            return True
    for m in REPORT_ZH.finditer(sent):
        if m.group("subj"):
            return True
    return False


def is_correction(text: str) -> bool:
    """The user corrects something said before ("correction:", "that's wrong", "说错了")."""
    return bool(CORRECTION_EN.search(text) or CORRECTION_ZH.search(text))


_CLAUSE_EN = re.compile(r"\s*[,;:]\s*|\s+(?:and|but|so)\s+(?=(?:i|i'm|i've|i'd|my|we|we're|our|also|now)\b)", re.I)
_CLAUSE_ZH = re.compile(r"\s*[，,；;：:]\s*")


def clauses(sent: str) -> list[str]:
    """Clauses of a sentence (commas, semicolons, "and I …")."""
    pat = _CLAUSE_ZH if has_cjk(sent) else _CLAUSE_EN
    return [c.strip() for c in pat.split(sent) if c and c.strip()]


def strip_lead(clause: str) -> str:
    """Drop discourse markers at the start ("and", "oh", "其实", "现在")."""
    prev = None
    while prev != clause:
        prev = clause
        clause = (_LEAD_ZH if has_cjk(clause) else _LEAD_EN).sub("", clause).strip()
    return clause


_CALLED = re.compile(r"^(?:大家|朋友们|朋友|同事们|家里人|身边的人)(?:都|一般|平时|通常)*叫我|"
                     r"^(?:everyone|everybody|people|friends|my friends|most people)\s+(?:usually\s+|just\s+)?"
                     r"calls? me\b", re.I)


def subject(clause: str) -> str:
    """"1" the user, "3" someone else, "" no explicit subject (inherits)."""
    c = strip_lead(clause)
    if _CALLED.search(c):
        return "1"  # "大家都叫我阿杰", "my friends call me Bo": about the user's own name
    if has_cjk(c):
        if re.match(r"^(?:我们|咱们)", c):
            return "1"
        if re.match(r"^我(?:的)?", c):
            head = re.sub(r"^我(?:的)?", "", c)
            return "3" if THIRD_ZH.match(head) else "1"
        return "3" if THIRD_ZH.match(c) else ""
    if THIRD_EN.search(c[:40]) and not re.match(r"^(?:i|i'm|i've|i'd|we|we're)\b", c, re.I):
        return "3"
    if re.match(r"^(?:i|i'm|i've|i'd|i am|my|we|we're|we've|our|me)\b", c, re.I):
        return "1"
    return ""
