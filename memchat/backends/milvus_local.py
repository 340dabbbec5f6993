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
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from memchat.backends.memory_index import Scopes, dense_top, sparse_top
from memchat.backends.scopes import MAX_HELD_DOCS
from memchat.backends.vectorstore import MemoryDoc, _Scope

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
    """Per-user scopes (:class:`memchat.backends.memory_index.Scopes`) over a Milvus collection."""

    def __init__(self, mem: MilvusMemory, exact: bool, max_docs: int = MAX_HELD_DOCS) -> None:
        self.mem = mem
        self.exact = exact  # every writer is in this process (a Milvus Lite file)
        self.key = (mem.uri, mem.collection_name)
        self.scopes = Scopes(lambda with_vectors: _Scope(mem.dim, with_vectors), self._user_ids, self._rows,
                             self._stamp, max_docs)

    def _stamp(self) -> int:
        return _generation(self.key) if self.exact else self.mem.count()

    def _user_ids(self, user_id: str) -> list[str]:
        from memchat.backends.milvus_store import quote

        return self.mem.ids(f"user_id == {quote(user_id)}")

    def _rows(self, ids: list[str], with_vectors: bool) -> Iterable[tuple[MemoryDoc, Any]]:
        return self.mem.fetch(ids, vectors=with_vectors)

    def wrote(self, docs: list[MemoryDoc], vectors: list[list[float]]) -> None:
        """After an upsert: update the loaded scopes in place (or drop them when another handle wrote)."""
        with self.scopes.lock:
            if not self.exact:
                for d in docs:
                    self.scopes.drop(d.user_id)
                return
            new = _bump(self.key)
            if self.scopes.seen != new - 1:
                self.scopes.reset(new)
                return
            for d, v in zip(docs, vectors):
                scope = self.scopes.held(d.user_id)
                if scope is not None:
                    scope.put(d, v)
            self.scopes.seen = new

    def deleted(self) -> None:
        with self.scopes.lock:
            self.scopes.reset()
            if self.exact:
                _bump(self.key)

    def scope(self, user_id: str) -> _Scope:
        """The user's documents, vectors and BM25 index, loaded from Milvus when not held."""
        return self.scopes.get(user_id)

    def dense(self, vec: list[float], user_id: str, thread_id: str | None, k: int,
              when: tuple[str, str] | None = None) -> list[tuple[MemoryDoc, float]] | None:
        """Exact cosine top-k in process; ``None`` when the user has too many memories to hold vectors."""
        with self.scopes.lock:
            scope = self.scopes.get(user_id)
            return dense_top(scope, vec, thread_id, k, when) if scope.with_vectors else None

    def sparse(self, toks: list[str], user_id: str, thread_id: str | None, k: int,
               when: tuple[str, str] | None = None) -> list[tuple[MemoryDoc, float]]:
        """BM25 top-k over the user's memories, as :meth:`ChromaMemory.sparse`."""
        with self.scopes.lock:
            return sparse_top(self.scopes.get(user_id), toks, thread_id, k, when)
