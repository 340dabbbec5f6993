"""What every vector store keeps in process: the query-embedding cache and each user's scope.

Shared by :class:`memchat.backends.vectorstore.ChromaMemory` and :class:`memchat.backends.milvus_local.LocalIndex` (the in-process
search over a Milvus collection), so both stores embed, hold and rank alike: :class:`EmbedCache` embeds a
query once (a user message searched for is not embedded again to store it), :class:`Scopes` holds the
scopes of the most recently used users (loaded from the store on first use, dropped when the store's stamp
says another process wrote), and :func:`dense_top` / :func:`sparse_top` rank within a scope.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from memchat.backends.scopes import MAX_HELD_DOCS, MAX_SCOPES, VECTORS_IN_MEMORY_MAX, _matvec

if TYPE_CHECKING:
    from memchat.backends.embeddings import STEmbeddings
    from memchat.backends.scopes import _Scope
    from memchat.memory.records import MemoryDoc

QUERY_CACHE = 64


class EmbedCache:
    """The embedder with a small cache of query vectors (least recently used dropped)."""

    def __init__(self, embeddings: STEmbeddings) -> None:
        self.embeddings = embeddings
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self._same_space = not (getattr(embeddings, "query_prefix", "") or "")  # a query vector is a doc vector

    def query(self, text: str) -> list[float]:
        """Query vector, cached: a user message embedded to search is not embedded again to store it."""
        with self._lock:
            vec = self._cache.get(text)
            if vec is not None:
                self._cache.move_to_end(text)
                return vec
        vec = self.embeddings.embed_query(text)  # the embedder picks its torch threads per batch
        with self._lock:
            self._cache[text] = vec
            while len(self._cache) > QUERY_CACHE:
                self._cache.popitem(last=False)
        return vec

    def docs(self, texts: list[str]) -> list[list[float]]:
        """Document vectors; texts just embedded as queries (with no query prefix) are not embedded again."""
        with self._lock:
            out = [self._cache.get(t) if self._same_space else None for t in texts]
        todo = [i for i, v in enumerate(out) if v is None]
        if todo:
            vecs = self.embeddings.embed_documents([texts[i] for i in todo])
            for i, v in zip(todo, vecs):
                out[i] = v
        return [v for v in out if v is not None]

    def clear(self) -> None:
        """Forget the cached vectors (after a delete: no text of forgotten memories stays in process)."""
        with self._lock:
            self._cache.clear()


class Scopes:
    """Users' scopes held in process, least recently used dropped; checked against the store when its stamp
    changes.

    ``ids(user)`` lists a user's memory ids in the store, ``rows(ids, with_vectors)`` reads them (with their
    vectors when asked), ``new(with_vectors)`` makes an empty scope, and ``stamp()`` tells whether the store
    changed under us (a count, or a write generation); owners that write advance :attr:`seen` themselves.

    When another process wrote, every held scope becomes *stale*: a stale scope is not searched or read until
    its user's ids have been listed again; new ids are then read and added, and a scope that lost an id (a
    memory forgotten elsewhere) is loaded afresh. Dropping every scope instead made each search of a server
    with ``--workers 2`` reload its user's memories, since the other worker writes all the time.
    """

    def __init__(self, new: Callable[[bool], _Scope], ids: Callable[[str], list[str]],
                 rows: Callable[[list[str], bool], Iterable[tuple[MemoryDoc, Any]]], stamp: Callable[[], int],
                 max_docs: int = MAX_HELD_DOCS, forgets: Callable[[], str] | None = None) -> None:
        self._new, self._ids, self._rows, self._stamp, self._forgets = new, ids, rows, stamp, forgets
        self.max_docs = max_docs  # memories held in all scopes together (the one just loaded always stays)
        self._held: OrderedDict[str, _Scope] = OrderedDict()
        self.lock = threading.RLock()
        self.seen = -1
        self.pending = 0  # new ids of this process's writes in flight (owners that write outside the lock)
        self._stale: set[str] = set()  # users whose held scope may miss another process's writes
        self.forgets_seen: str | None = None  # the store's forget mark when last checked (None: not known)

    def held(self, user_id: str) -> _Scope | None:
        """The user's scope when it is loaded (no load, no sync)."""
        return self._held.get(user_id)

    def find(self, ids: list[str], sync: bool = False) -> dict[str, MemoryDoc]:
        """Those of ``ids`` held in a loaded scope (live ones); with ``sync``, after checking the stamp."""
        found: dict[str, MemoryDoc] = {}
        with self.lock:
            if sync:
                self._sync()
            for user_id, scope in self._held.items():
                if user_id in self._stale:
                    continue
                for i in ids:
                    p = scope.pos.get(i)
                    if p is not None and scope.bm25.alive[p]:
                        found[i] = scope.docs[p]
        return found

    def drop(self, user_id: str) -> None:
        """Drop one user's scope (the next use reloads it)."""
        with self.lock:
            self._held.pop(user_id, None)
            self._stale.discard(user_id)

    def reset(self, seen: int = -1, forgets: str | None = None) -> None:
        """Drop every scope (the next use reloads)."""
        with self.lock:
            self._held.clear()
            self._stale.clear()
            self.seen, self.forgets_seen = seen, forgets

    def _sync(self) -> None:
        """Mark every held scope stale when another process wrote or forgot.

        A count alone misses a forget that other writes made up for (5 memories deleted, 5 stored), and the
        forgotten memories would still be served from here; so unless the count already marked everything
        stale, the store's forget mark (changed by every delete) is read as well."""
        stamp = self._stamp()
        own = stamp == self.seen or (self.seen >= 0 and self.pending > 0 and self.seen < stamp <= self.seen + self.pending)
        if not own:  # another process wrote: every scope is checked (its lost ids seen) on its next use
            first = self.seen < 0 and not self._held
            self._stale, self.seen = set(self._held), stamp
            # the mark is read on the first sync only: under another worker's writes this branch is the common
            # one, and an unknown mark just marks the scopes stale once more on the next quiet sync
            self.forgets_seen = self._forgets() if first and self._forgets is not None else None
            return
        if self._forgets is None:
            return
        mark = self._forgets()
        if mark != self.forgets_seen:  # a forget elsewhere (or not known since the last foreign write)
            self._stale, self.forgets_seen = set(self._held), mark

    def _refresh(self, user_id: str, scope: _Scope) -> bool:
        """Bring a stale scope up to date with the store; False when it lost a memory (load it afresh)."""
        ids = self._ids(user_id)
        now = set(ids)
        if any(i not in now for i in scope.pos):
            return False
        new = [i for i in ids if i not in scope.pos]
        for doc, vec in self._rows(new, scope.with_vectors) if new else ():
            scope.put(doc, vec)
        self._stale.discard(user_id)
        return True

    def get(self, user_id: str) -> _Scope:
        """The user's scope, loaded from the store when not held, brought up to date when another process wrote."""
        with self.lock:
            self._sync()
            scope = self._held.get(user_id)
            if scope is not None and (user_id not in self._stale or self._refresh(user_id, scope)):
                self._held.move_to_end(user_id)
                return scope
            self._held.pop(user_id, None)
            self._stale.discard(user_id)
            ids = self._ids(user_id)
            scope = self._new(len(ids) <= VECTORS_IN_MEMORY_MAX)
            for doc, vec in self._rows(ids, scope.with_vectors):
                scope.put(doc, vec)
            self._held[user_id] = scope
            self._evict()
            return scope

    def _evict(self) -> None:
        """Drop least recently used scopes beyond ``max_docs`` memories or :data:`MAX_SCOPES` users."""
        held = sum(len(s) for s in self._held.values())
        while len(self._held) > 1 and (held > self.max_docs or len(self._held) > MAX_SCOPES):
            user_id, dropped = self._held.popitem(last=False)
            self._stale.discard(user_id)
            held -= len(dropped)


def _top(scores: np.ndarray, k: int, n: int) -> np.ndarray:
    kk = min(max(1, k), n)
    top = np.argpartition(-scores, kk - 1)[:kk]
    return top[np.argsort(-scores[top], kind="stable")]


def dense_top(scope: _Scope, vec: list[float], thread_id: str | None, k: int,
              when: tuple[str, str] | None = None) -> list[tuple[MemoryDoc, float]]:
    """Exact cosine top-k over the scope's vectors visible from ``thread_id`` (``scope.with_vectors``), within
    the ``when`` days when given."""
    n = scope.bm25.size
    mask = scope.visible(thread_id, when) if n else np.zeros(0, dtype=bool)
    n_visible = int(mask.sum())
    if not n_visible:
        return []
    sims = _matvec(scope.vecs[:n], np.asarray(vec, dtype=np.float32))
    sims[~mask] = -np.inf
    return [(scope.docs[int(i)], float(sims[i])) for i in _top(sims, k, n_visible)]


def sparse_top(scope: _Scope, toks: list[str], thread_id: str | None, k: int,
               when: tuple[str, str] | None = None) -> list[tuple[MemoryDoc, float]]:
    """BM25 top-k over the scope's memories visible from ``thread_id`` (positive scores only), within the
    ``when`` days when given."""
    if not toks or not scope.bm25.size:
        return []
    scores: Any = scope.bm25.scores(toks)
    scores[~scope.visible(thread_id, when)] = 0.0
    pos = int((scores > 0).sum())
    if not pos:
        return []
    return [(scope.docs[int(i)], float(scores[i])) for i in _top(scores, k, pos) if scores[i] > 0]
