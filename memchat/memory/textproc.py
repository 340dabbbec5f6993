"""Text helpers: Chinese-aware tokenization for BM25 and grounding."""

from __future__ import annotations

import logging
import re
from functools import lru_cache

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
STOPWORDS = frozenset(
    """a an the and or but if of at by for with about against between into through during before after
    above below to from up down in out on off over under again further then once here there when where why
    how all any both each few more most other some such no nor not only own same so than too very s t can
    will just don should now is am are was were be been being have has had having do does did doing i me my
    myself we our ours you your yours he him his she her hers it its they them their what which who whom this
    that these those would could i'm it's that's what's 的 了 是 在 我 你 他 她 它 们 吗 呢 吧 啊 和 就 也 都 还""".split()
)


@lru_cache(maxsize=1)
def _jieba():  # type: ignore[no-untyped-def]
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def has_cjk(text: str) -> bool:
    """Whether ``text`` contains Chinese characters."""
    return bool(_CJK.search(text))


def tokenize(text: str, keep_stopwords: bool = False) -> list[str]:
    """Lower-cased word tokens; Chinese runs are segmented with jieba (search mode)."""
    out: list[str] = []
    for tok in _WORD.findall(text.lower()):
        if _CJK.fullmatch(tok):
            out.extend(w for w in _jieba().lcut_for_search(tok) if w.strip())
        else:
            out.append(tok.replace("’", "'"))
    if keep_stopwords:
        return out
    return [t for t in out if t not in STOPWORDS]


def overlap(claim: str, source: str) -> float:
    """Share of the claim's content tokens that occur in the source (lexical grounding)."""
    c = set(tokenize(claim))
    if not c:
        return 0.0
    s = set(tokenize(source))
    # Chinese: also accept character-level support for short words
    hits = sum(1 for t in c if t in s or (has_cjk(t) and all(ch in source for ch in t)))
    return hits / len(c)
