"""Vector memory: Chroma (embedded or server) + BM25, fused, scoped by user and thread."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import chromadb
import numpy as np
from langchain_chroma import Chroma

from memchat.backends.bm25 import BM25_B, BM25_K1, BM25Index, bm25_tokens, stem
from memchat.backends.embeddings import STEmbeddings
from memchat.backends.scopes import MAX_SCOPES, VECTORS_IN_MEMORY_MAX, _few_threads, _matvec, _Scope
from memchat.memory.records import BM25_WEIGHT, DENSE_WEIGHT, Hit, MemoryDoc, fuse, msg_id
from memchat.memory.textproc import tokenize

# re-exported: the vector-memory API in one import (records and ranking live in memchat.memory.records,
# the BM25 index in memchat.backends.bm25, the in-process scopes in memchat.backends.scopes)
__all__ = ["BM25_B", "BM25_K1", "BM25_WEIGHT", "DENSE_WEIGHT", "MAX_SCOPES", "VECTORS_IN_MEMORY_MAX", "BM25Index",
           "ChromaMemory", "EmbedderMismatch", "Hit", "MemoryDoc", "VectorMemory", "_Scope", "_matvec", "bm25_tokens",
           "fuse", "make_chroma_client", "msg_id", "stem"]

QUERY_CACHE = 64
SMALL_BATCH = 8  # up to this many texts are embedded on one torch thread


class EmbedderMismatch(RuntimeError):
    """The store was built with another embedder; ``memchat reindex`` re-embeds it."""


class VectorMemory(Protocol):
    """What memchat needs from a vector memory (:class:`ChromaMemory`, :class:`memchat.backends.milvus_store.MilvusMemory`)."""

    def add(self, docs: list[MemoryDoc]) -> None: ...

    def search(self, query: str, user_id: str, thread_id: str | None, k: int,
               min_score: float = 0.0) -> list[Hit]: ...

    def get_ids(self, ids: list[str]) -> list[MemoryDoc]: ...

    def delete_thread(self, thread_id: str) -> int: ...

    def delete_user(self, user_id: str) -> int: ...

    def count(self) -> int: ...

    def all_docs(self) -> list[MemoryDoc]: ...

    def dense(self, query: str, user_id: str, thread_id: str | None, k: int) -> list[tuple[MemoryDoc, float]]: ...

    def describe(self) -> str: ...


def make_chroma_client(chroma_url: str, data_dir: Path) -> Any:
    """Embedded ``PersistentClient`` under the data dir, or an ``HttpClient`` for a Chroma server."""
    settings = chromadb.config.Settings(anonymized_telemetry=False)
    if chroma_url:
        u = urlparse(chroma_url if "://" in chroma_url else f"http://{chroma_url}")
        return chromadb.HttpClient(host=u.hostname or "127.0.0.1", port=u.port or 8000, ssl=u.scheme == "https",
                                   settings=settings)
    path = Path(data_dir) / "chroma"
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=settings)


class ChromaMemory:
    """Hybrid memory over one Chroma collection (cosine space).

    Chroma is the store of record. Each user's memories are also held in process (least recently used
    users are dropped): an incremental BM25 index, and their vectors for an exact in-memory dense
    search, so a query costs one embedding and no round trip. Writes of other processes (replicas,
    a Chroma server shared by several memchat servers) are noticed by the collection's count.
    """

    def __init__(self, client: Any, embeddings: STEmbeddings, collection: str = "memchat",
                 check_embedder: bool = True) -> None:
        self.embeddings = embeddings
        self.client = client
        self.collection_name = collection
        meta = {"hnsw:space": "cosine", "embedder": embeddings.identity, "dim": embeddings.dim}
        self.store = Chroma(collection_name=collection, embedding_function=embeddings, client=client,
                            collection_metadata=meta)
        self.col = self.store._collection
        existing = self.col.metadata or {}
        if check_embedder and existing.get("embedder") and existing.get("embedder") != embeddings.identity:
            raise EmbedderMismatch(
                f"vector store {collection!r} was built with embedder {existing.get('embedder')!r}, "
                f"but MEMCHAT_EMBEDDING_MODEL is {embeddings.identity!r}; run `memchat reindex` to re-embed it"
            )
        self._lock = threading.RLock()
        self._scopes: OrderedDict[str, _Scope] = OrderedDict()
        self._known_count = -1
        self._qcache: OrderedDict[str, list[float]] = OrderedDict()
        self._same_space = not (getattr(embeddings, "query_prefix", "") or "")

    # ---- embeddings -------------------------------------------------------------------------
    def embed_query(self, text: str) -> list[float]:
        """Query vector, cached: a user message embedded to search is not embedded again to store it."""
        with self._lock:
            vec = self._qcache.get(text)
            if vec is not None:
                self._qcache.move_to_end(text)
                return vec
        with _few_threads():
            vec = self.embeddings.embed_query(text)
        with self._lock:
            self._qcache[text] = vec
            while len(self._qcache) > QUERY_CACHE:
                self._qcache.popitem(last=False)
        return vec

    def _embed_docs(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float] | None] = [None] * len(texts)
        if self._same_space:  # no query prefix: a query vector is the document vector
            with self._lock:
                for i, t in enumerate(texts):
                    out[i] = self._qcache.get(t)
        todo = [i for i, v in enumerate(out) if v is None]
        if todo:
            with _few_threads(len(todo) <= SMALL_BATCH):
                vecs = self.embeddings.embed_documents([texts[i] for i in todo])
            for i, v in zip(todo, vecs):
                out[i] = v
        return [v for v in out if v is not None]

    # ---- writes -----------------------------------------------------------------------------
    def add(self, docs: list[MemoryDoc]) -> None:
        """Upsert documents (idempotent ids)."""
        docs = [d for d in docs if d.text.strip()]
        if not docs:
            return
        uniq = {d.id: d for d in docs}
        docs = list(uniq.values())
        vectors = self._embed_docs([d.text for d in docs])
        with self._lock:
            # which ids are new (for the count that detects foreign writes): a loaded user's memories are
            # all in process, so only ids of users not loaded are asked of Chroma
            new_ids, ask = 0, []
            for d in docs:
                scope = self._scopes.get(d.user_id)
                if scope is None:
                    ask.append(d.id)
                elif d.id not in scope.pos:
                    new_ids += 1
            if ask:
                new_ids += len(ask) - len(self.col.get(ids=ask, include=[])["ids"])
            self.col.upsert(ids=[d.id for d in docs], documents=[d.text for d in docs],
                            metadatas=[d.metadata() for d in docs], embeddings=vectors)  # type: ignore[arg-type]
            if self._known_count >= 0:
                self._known_count += new_ids
            for d, v in zip(docs, vectors):
                scope = self._scopes.get(d.user_id)
                if scope is not None:
                    scope.put(d, v)

    def _invalidate(self) -> None:
        self._scopes.clear()
        self._known_count = self.col.count()

    def delete_thread(self, thread_id: str) -> int:
        """Forget a thread's thread-scoped memories."""
        where: Any = {"$and": [{"thread_id": thread_id}, {"scope": "thread"}]}
        return self._delete(where)

    def delete_user(self, user_id: str) -> int:
        """Forget everything stored for a user."""
        return self._delete({"user_id": user_id})

    def _delete(self, where: Any) -> int:
        with self._lock:
            ids = self.col.get(where=where, include=[])["ids"]
            if ids:
                self.col.delete(ids=ids)
            self._invalidate()
            self._qcache.clear()
            return len(ids)

    def count(self) -> int:
        """Number of stored memories (all users)."""
        return int(self.col.count())

    def describe(self) -> str:
        """Collection, count and embedder (for ``memchat check``); BM25 and fusion run in process."""
        meta = self.col.metadata or {}
        return (f"collection {self.collection_name!r} ({meta.get('dim', self.embeddings.dim)} dims, BM25 in process) "
                f"with {self.count()} memories; embedder {meta.get('embedder', self.embeddings.identity)}")

    # ---- reads ------------------------------------------------------------------------------
    def get_ids(self, ids: list[str]) -> list[MemoryDoc]:
        """Fetch documents by id (missing ids are skipped); served from process memory when loaded."""
        if not ids:
            return []
        found: dict[str, MemoryDoc] = {}
        with self._lock:
            for scope in self._scopes.values():
                for i in ids:
                    p = scope.pos.get(i)
                    if p is not None and scope.bm25.alive[p]:
                        found[i] = scope.docs[p]
        rest = [i for i in ids if i not in found]
        if rest:
            res = self.col.get(ids=rest, include=["documents", "metadatas"])
            for i, t, m in zip(res["ids"], res["documents"] or [], res["metadatas"] or []):
                found[i] = MemoryDoc.from_chroma(i, t or "", dict(m or {}))
        return [found[i] for i in ids if i in found]

    def all_docs(self, where: Any | None = None) -> list[MemoryDoc]:
        """All documents (optionally filtered), for re-indexing."""
        res = self.col.get(where=where, include=["documents", "metadatas"])
        return [MemoryDoc.from_chroma(i, t or "", dict(m or {}))
                for i, t, m in zip(res["ids"], res["documents"] or [], res["metadatas"] or [])]

    def _sync(self) -> None:
        """Drop the in-process copies when another process changed the collection."""
        total = self.col.count()
        if total != self._known_count:
            self._scopes.clear()
            self._known_count = total

    def _scope(self, user_id: str) -> _Scope:
        with self._lock:
            self._sync()
            scope = self._scopes.get(user_id)
            if scope is not None:
                self._scopes.move_to_end(user_id)
                return scope
            where: Any = {"user_id": user_id}
            ids = self.col.get(where=where, include=[])["ids"]
            with_vectors = len(ids) <= VECTORS_IN_MEMORY_MAX
            scope = _Scope(self.embeddings.dim, with_vectors)
            include = ["documents", "metadatas"] + (["embeddings"] if with_vectors else [])
            for start in range(0, len(ids), 5000):
                res = self.col.get(ids=ids[start:start + 5000], include=include)  # type: ignore[arg-type]
                got: Any = res.get("embeddings")
                vecs: list[Any] = list(got) if got is not None else [None] * len(res["ids"])
                for i, t, m, v in zip(res["ids"], res["documents"] or [], res["metadatas"] or [], vecs):
                    scope.put(MemoryDoc.from_chroma(i, t or "", dict(m or {})), v)
            self._scopes[user_id] = scope
            while len(self._scopes) > MAX_SCOPES:
                self._scopes.popitem(last=False)
            return scope

    @staticmethod
    def _visible(doc: MemoryDoc, thread_id: str | None) -> bool:
        return thread_id is None or doc.scope == "user" or doc.thread_id == thread_id

    def dense(self, query: str, user_id: str, thread_id: str | None, k: int,
              vector: list[float] | None = None, scope: _Scope | None = None) -> list[tuple[MemoryDoc, float]]:
        """Cosine top-k within the user's (and thread's) scope."""
        vec = vector if vector is not None else self.embed_query(query)
        with self._lock:
            scope = scope if scope is not None else self._scope(user_id)
            if scope.with_vectors:
                n = scope.bm25.size
                if not n:
                    return []
                mask = scope.visible(thread_id)
                sims = _matvec(scope.vecs[:n], np.asarray(vec, dtype=np.float32))
                sims[~mask] = -np.inf
                n_visible = int(mask.sum())
                if not n_visible:
                    return []
                kk = min(max(1, k), n_visible)
                top = np.argpartition(-sims, kk - 1)[:kk]
                top = top[np.argsort(-sims[top], kind="stable")]
                return [(scope.docs[int(i)], float(sims[i])) for i in top]
        where: Any = {"user_id": user_id}
        if thread_id is not None:
            where = {"$and": [{"user_id": user_id}, {"$or": [{"scope": "user"}, {"thread_id": thread_id}]}]}
        res = self.col.query(query_embeddings=[vec], n_results=max(1, k), where=where,  # type: ignore[arg-type]
                             include=["documents", "metadatas", "distances"])
        out = []
        for i, t, m, d in zip(res["ids"][0], (res["documents"] or [[]])[0], (res["metadatas"] or [[]])[0],
                              (res["distances"] or [[]])[0]):
            out.append((MemoryDoc.from_chroma(i, t or "", dict(m or {})), 1.0 - float(d)))
        return out

    def sparse(self, query: str, user_id: str, thread_id: str | None, k: int,
               scope: _Scope | None = None) -> list[tuple[MemoryDoc, float]]:
        """BM25 top-k within the same scope (stemmed words; turns also match their speaker's name)."""
        q = stem(tokenize(query))
        if not q:
            return []
        with self._lock:
            scope = scope if scope is not None else self._scope(user_id)
            n = scope.bm25.size
            if not n:
                return []
            scores = scope.bm25.scores(q)
            scores[~scope.visible(thread_id)] = 0.0
            pos = int((scores > 0).sum())
            if not pos:
                return []
            kk = min(max(1, k), pos)
            top = np.argpartition(-scores, kk - 1)[:kk]
            top = top[np.argsort(-scores[top], kind="stable")]
            return [(scope.docs[int(i)], float(scores[i])) for i in top if scores[i] > 0]

    def search(self, query: str, user_id: str, thread_id: str | None, k: int, min_score: float = 0.0) -> list[Hit]:
        """Dense + BM25 over the user's in-process scope, fused by :func:`fuse`."""
        vec = self.embed_query(query)
        with self._lock:
            scope = self._scope(user_id)
            dense = self.dense(query, user_id, thread_id, k, vector=vec, scope=scope)
            sparse = self.sparse(query, user_id, thread_id, k, scope=scope)
        return fuse(dense, sparse, min_score)


