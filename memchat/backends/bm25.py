"""The one BM25 of memchat: an incremental Okapi BM25 index over stemmed tokens (jieba for Chinese)."""

from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache
from typing import Any

import numpy as np

from memchat.memory.records import MemoryDoc
from memchat.memory.textproc import tokenize

BM25_K1 = 1.5
BM25_B = 0.75


class BM25Index:
    """Incremental Okapi BM25 (Lucene idf): documents are appended or retired, never re-indexed."""

    def __init__(self, k1: float = BM25_K1, b: float = BM25_B) -> None:
        self.k1, self.b = k1, b
        self._post: dict[str, tuple[list[int], list[int]]] = {}
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.df: dict[str, int] = {}
        self.lengths = np.zeros(64, dtype=np.float32)
        self.alive = np.zeros(64, dtype=bool)
        self.size = 0
        self.n_alive = 0
        self.total_len = 0.0

    def _grow(self, n: int) -> None:
        if n <= len(self.lengths):
            return
        cap = max(n, 2 * len(self.lengths))
        self.lengths = np.resize(self.lengths, cap)
        alive = np.zeros(cap, dtype=bool)
        alive[: self.size] = self.alive[: self.size]
        self.alive = alive

    def add(self, tokens: list[str]) -> int:
        """Index one document; returns its slot."""
        i = self.size
        self._grow(i + 1)
        self.size += 1
        tf = Counter(tokens)
        for t, c in tf.items():
            post = self._post.setdefault(t, ([], []))
            post[0].append(i)
            post[1].append(c)
            self.df[t] = self.df.get(t, 0) + 1
            self._arrays.pop(t, None)
        self.lengths[i] = len(tokens)
        self.alive[i] = True
        self.n_alive += 1
        self.total_len += len(tokens)
        return i

    def retire(self, i: int, tokens: list[str]) -> None:
        """Take a slot out of the statistics and the results (its postings are skipped from now on)."""
        if not self.alive[i]:
            return
        self.alive[i] = False
        self.n_alive -= 1
        self.total_len -= float(self.lengths[i])
        for t in set(tokens):
            self.df[t] = max(0, self.df.get(t, 0) - 1)

    def _postings(self, t: str) -> tuple[np.ndarray, np.ndarray] | None:
        arr = self._arrays.get(t)
        if arr is None:
            post = self._post.get(t)
            if post is None:
                return None
            arr = self._arrays[t] = (np.asarray(post[0], dtype=np.int64), np.asarray(post[1], dtype=np.float32))
        return arr

    def scores(self, query: list[str]) -> np.ndarray:
        """BM25 score of every slot (0 for retired ones)."""
        out = np.zeros(self.size, dtype=np.float32)
        if not self.n_alive:
            return out
        avgdl = max(self.total_len / self.n_alive, 1e-6)
        n = self.n_alive
        for t in dict.fromkeys(query):
            df = self.df.get(t, 0)
            arr = self._postings(t) if df else None
            if arr is None:
                continue
            idx, tf = arr
            idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
            norm = self.k1 * (1.0 - self.b + self.b * self.lengths[idx] / avgdl)
            out[idx] += idf * tf / (tf + norm)
        out[~self.alive[: self.size]] = 0.0
        return out


def bm25_tokens(doc: MemoryDoc) -> list[str]:
    """What BM25 indexes: the speaker's name (for turns) and the text, stemmed."""
    text = f"{doc.speaker} {doc.text}" if doc.kind == "turn" and doc.speaker else doc.text
    return stem(tokenize(text))


def stem(tokens: list[str]) -> list[str]:
    """English Snowball stems (Chinese and other tokens are left as they are)."""
    stemmer = _stemmer()
    if stemmer is None:
        return tokens
    return [stemmer.stemWord(t) if t.isascii() else t for t in tokens]


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    try:
        import Stemmer

        return Stemmer.Stemmer("english")
    except ImportError:  # pragma: no cover - pystemmer is a dependency
        return None
