"""In-process search over a Milvus collection: each user's memories held as :class:`ChromaMemory` holds them.

Used for Milvus Lite files and for a Milvus without full-text search. A Lite file belongs to one
process, and Milvus Lite (a pure-Python engine) evaluates filters and builds its BM25 index in Python on
every search: measured on the 2-core machine at 10K memories, a filtered dense search took 120 ms and a
BM25 search 250 ms, 10 s before the first flush. Holding the user's documents, vectors and an
incremental BM25 index in process (Milvus stays the store of record) gives Chroma's latency and exactly
Chroma's ranking. Every writer of a Lite file is in this process, so a per-collection write generation
tells when another handle wrote; for a Milvus server without full-text search the count does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from memchat.backends.scopes import MAX_SCOPES, VECTORS_IN_MEMORY_MAX, _matvec, _Scope
from memchat.memory.records import MemoryDoc

if TYPE_CHECKING:
    from memchat.backends.milvus_store import MilvusMemory

_generations: dict[tuple[str, str], int] = {}
_gen_lock = threading.Lock()


def _bump(key: tuple[str, str]) -> int:
    with _gen_lock:
        _generations[key] = _generations.get(key, 0) + 1
        return _generations[key]


def _generation(key: tuple[str, str]) -> int:
    with _gen_lock:
        return _generations.get(key, 0)


class LocalIndex:
    """Per-user scopes (least recently used dropped) over a Milvus collection."""

    def __init__(self, mem: MilvusMemory, exact: bool) -> None:
        self.mem = mem
        self.exact = exact  # every writer is in this process (a Milvus Lite file)
        self.key = (mem.uri, mem.collection_name)
        self._scopes: OrderedDict[str, _Scope] = OrderedDict()
        self._lock = threading.RLock()
        self._seen = -1

    def wrote(self, docs: list[MemoryDoc], vectors: list[list[float]]) -> None:
        """After an upsert: update the loaded scopes in place (or drop them when another handle wrote)."""
        with self._lock:
            if not self.exact:
                for d in docs:
                    self._scopes.pop(d.user_id, None)
                return
            new = _bump(self.key)
            if self._seen == new - 1:
                for d, v in zip(docs, vectors):
                    scope = self._scopes.get(d.user_id)
                    if scope is not None:
                        scope.put(d, v)
            else:
                self._scopes.clear()
            self._seen = new

    def deleted(self) -> None:
        with self._lock:
            self._scopes.clear()
            if self.exact:
                _bump(self.key)

    def _sync(self) -> None:
        stamp = _generation(self.key) if self.exact else self.mem.count()
        if stamp != self._seen:
            self._scopes.clear()
            self._seen = stamp

    def scope(self, user_id: str) -> _Scope:
        """The user's documents, vectors and BM25 index, loaded from Milvus when not held."""
        from memchat.backends.milvus_store import quote

        with self._lock:
            self._sync()
            scope = self._scopes.get(user_id)
            if scope is not None:
                self._scopes.move_to_end(user_id)
                return scope
            ids = self.mem.ids(f"user_id == {quote(user_id)}")
            with_vectors = len(ids) <= VECTORS_IN_MEMORY_MAX
            scope = _Scope(self.mem.dim, with_vectors)
            for doc, vec in self.mem.fetch(ids, vectors=with_vectors):
                scope.put(doc, vec)
            self._scopes[user_id] = scope
            while len(self._scopes) > MAX_SCOPES:
                self._scopes.popitem(last=False)
            return scope

    def dense(self, vec: list[float], user_id: str, thread_id: str | None, k: int
              ) -> list[tuple[MemoryDoc, float]] | None:
        """Exact cosine top-k in process; ``None`` when the user has too many memories to hold vectors."""
        with self._lock:
            scope = self.scope(user_id)
            if not scope.with_vectors:
                return None
            n = scope.bm25.size
            mask = scope.visible(thread_id) if n else np.zeros(0, dtype=bool)
            if not n or not mask.any():
                return []
            sims = _matvec(scope.vecs[:n], np.asarray(vec, dtype=np.float32))
            sims[~mask] = -np.inf
            kk = min(max(1, k), int(mask.sum()))
            top = np.argpartition(-sims, kk - 1)[:kk]
            top = top[np.argsort(-sims[top], kind="stable")]
            return [(scope.docs[int(i)], float(sims[i])) for i in top]

    def sparse(self, toks: list[str], user_id: str, thread_id: str | None, k: int) -> list[tuple[MemoryDoc, float]]:
        """BM25 top-k over the user's memories, as :meth:`ChromaMemory.sparse`."""
        with self._lock:
            scope = self.scope(user_id)
            if not scope.bm25.size:
                return []
            scores: Any = scope.bm25.scores(toks)
            scores[~scope.visible(thread_id)] = 0.0
            pos = int((scores > 0).sum())
            if not pos:
                return []
            kk = min(max(1, k), pos)
            top = np.argpartition(-scores, kk - 1)[:kk]
            top = top[np.argsort(-scores[top], kind="stable")]
            return [(scope.docs[int(i)], float(scores[i])) for i in top if scores[i] > 0]
