"""What a turn is worth recalling for, and what is worth storing: domain rules, no I/O.

* ``content_free`` — an acknowledgement or filler ("ok thanks", "好的。", "好的，我知道了。"): nothing to
  search for, so the turn recalls nothing and such lines are never shown as memories.
* ``asks`` — the message is a question (every sentence asks, or it is a request to recall): it gets
  the large fresh-memory share; a statement (also one with a question tacked on) gets the small one.
* ``carries_fact`` — a sentence states something beyond chit-chat ("好的，我考虑一下。" does not).
* ``now_text`` — the date and time of a turn as the volatile tail shows it.
"""

from __future__ import annotations

import re
from datetime import datetime

from memchat.memory.textproc import tokenize

_SENTENCE = re.compile(r"(?<=[.!?;])\s+|(?<=[。！？；])\s*|\n+")

# Words that carry no content of their own in a short reply (English and Chinese), on top of STOPWORDS.
FILLER = frozenset(
    """ok okay k kk thanks thank thx ty yes yeah yep yup no nope sure fine good great cool nice alright right
    got hi hello hey bye goodbye see later please well oh ah hmm um uh lol haha sounds perfect awesome
    understood noted let know think consider maybe will see appreciate much lot welcome
    好 好的 好吧 谢谢 多谢 谢 嗯 嗯嗯 哦 噢 行 可以 收到 明白 明白了 知道 知道了 了解 好滴 没问题 再见 拜拜 你好 您好
    考虑 一下 考虑一下 想想 看看 稍后 回头 再说 不客气 麻烦 辛苦""".split()
)
_QUESTION_WORDS = re.compile(
    r"^\s*(?:what|when|where|which|who|whom|whose|why|how|is|are|was|were|do|does|did|can|could|would|will|"
    r"should|have|has|had|tell me|remind me|remember|recall)\b",
    re.IGNORECASE,
)
_ZH_QUESTION = re.compile(r"吗|什么|哪|几|多少|怎么|怎样|为什么|为何|谁|何时|是否|有没有|是不是|还记得|记得|提醒我")


def sentences(text: str) -> list[str]:
    """Sentences of a message (English and Chinese punctuation)."""
    return [p.strip() for p in _SENTENCE.split(text) if p and p.strip()]


def content_tokens(text: str) -> list[str]:
    """Tokens that carry content: no stopwords, no filler."""
    return [t for t in tokenize(text) if t not in FILLER]


def content_free(text: str) -> bool:
    """True for a message with nothing to search for (acknowledgements, filler, punctuation)."""
    return not content_tokens(text)


def asks(text: str) -> bool:
    """True when the message is a question: every sentence asks (a question mark, a question word, or a
    recall request). A statement with a question tacked on ("We moved to Porto! Have you been?") is not."""
    parts = [p for p in sentences(text) if content_tokens(p) or "?" in p or "？" in p]
    return bool(parts) and all(_asks_sentence(p) for p in parts)


def _asks_sentence(s: str) -> bool:
    if s.endswith(("?", "？")):
        return True
    return bool(_QUESTION_WORDS.search(s) or _ZH_QUESTION.search(s))


def carries_fact(sentence: str, min_tokens: int = 2) -> bool:
    """A statement worth storing as a fact: at least ``min_tokens`` content tokens, not a question."""
    s = sentence.strip()
    if not s or s.endswith(("?", "？")):
        return False
    return len(content_tokens(s)) >= min_tokens


def now_text(stored: str) -> str:
    """``2026-12-01 03:45`` (UTC, as turns are stored) as ``Tuesday 1 Dec 2026, 03:45 UTC``."""
    try:
        d = datetime.strptime(stored.strip()[:16], "%Y-%m-%d %H:%M")
    except ValueError:
        return stored.strip()
    return f"{d.strftime('%A')} {d.day} {d.strftime('%b %Y')}, {d.strftime('%H:%M')} UTC"
