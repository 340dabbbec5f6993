"""One user's memories kept in process: documents, their BM25 index and (when not too many) their vectors."""

from __future__ import annotations

from typing import Any

import numpy as np

from memchat.backends.bm25 import BM25Index, bm25_tokens
from memchat.memory.records import MemoryDoc

# Users whose memories are kept in process, least recently used dropped first. The bound is the number of
# memories held (MEMCHAT_MEMORY_CACHE_DOCS: ~2.5 KB each with its vector and BM25 postings), and at most
# MAX_SCOPES users. A bound of 32 users made a replica serving 50 conversations reload a user's whole scope
# from the store for 473 of 501 searches (`memchat bench load --threads 50`), ~8 % of its GIL time.
MAX_SCOPES = 4096
MAX_HELD_DOCS = 100_000
VECTORS_IN_MEMORY_MAX = 100_000  # above this many memories a user's dense search goes to Chroma


class _Scope:
    """One user's memories in process: docs, BM25 index, and (when not too many) their vectors."""

    def __init__(self, dim: int, with_vectors: bool) -> None:
        self.docs: list[MemoryDoc] = []
        self.tokens: list[list[str]] = []
        self.pos: dict[str, int] = {}
        self.bm25 = BM25Index()
        self.with_vectors = with_vectors
        self.vecs = np.zeros((64 if with_vectors else 0, dim), dtype=np.float32)
        self.user_scope = np.zeros(64, dtype=bool)
        self.thread_code = np.zeros(64, dtype=np.int64)
        self.day = np.zeros(64, dtype="U10")  # YYYY-MM-DD the memory was stored (a question may name it)
        self.codes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.pos)

    def put(self, doc: MemoryDoc, vec: Any | None) -> None:
        """Add a document, or replace the one with the same id."""
        old = self.pos.get(doc.id)
        if old is not None:
            self.bm25.retire(old, self.tokens[old])
        toks = bm25_tokens(doc)
        i = self.bm25.add(toks)
        self.docs.append(doc)
        self.tokens.append(toks)
        self.pos[doc.id] = i
        n = i + 1
        if n > len(self.user_scope):
            cap = max(n, 2 * len(self.user_scope))
            self.user_scope = np.resize(self.user_scope, cap)
            self.thread_code = np.resize(self.thread_code, cap)
            self.day = np.resize(self.day, cap)
        self.user_scope[i] = doc.scope == "user"
        self.thread_code[i] = self.codes.setdefault(doc.thread_id, len(self.codes))
        self.day[i] = doc.date[:10]
        if self.with_vectors:
            if vec is None:
                self.with_vectors = False
                self.vecs = np.zeros((0, self.vecs.shape[1]), dtype=np.float32)
                return
            if n > len(self.vecs):
                grown = np.zeros((max(n, 2 * len(self.vecs)), self.vecs.shape[1]), dtype=np.float32)
                grown[: len(self.vecs)] = self.vecs
                self.vecs = grown
            self.vecs[i] = np.asarray(vec, dtype=np.float32)

    def visible(self, thread_id: str | None, when: tuple[str, str] | None = None) -> np.ndarray:
        """Mask of live slots visible from ``thread_id`` (all the user's when ``None``), stored within the
        ``when`` days (inclusive ``YYYY-MM-DD`` pair) when given."""
        n = self.bm25.size
        mask = self.bm25.alive[:n].copy()
        if thread_id is not None:
            code = self.codes.get(thread_id, -1)
            mask &= self.user_scope[:n] | (self.thread_code[:n] == code)
        if when is not None:
            mask &= (self.day[:n] >= when[0]) & (self.day[:n] <= when[1])
        return mask


def _matvec(m: np.ndarray, v: np.ndarray, rows: int = 1024) -> np.ndarray:
    """``m @ v`` in blocks small enough that BLAS stays on one thread.

    A 10K x 384 product takes 0.3 ms, but OpenBLAS threads it, and next to other work on 2 cores
    its p95 was 40 ms; 1K-row blocks: p50 0.5 ms, p95 0.6 ms.
    """
    out = np.empty(len(m), dtype=np.float32)
    for i in range(0, len(m), rows):
        np.dot(m[i:i + rows], v, out=out[i:i + rows])
    return out
