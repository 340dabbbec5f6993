"""Vector memory: Chroma (embedded or server) + BM25, fused, scoped by user and thread."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import chromadb
from langchain_chroma import Chroma

from memchat.backends.bm25 import BM25_B, BM25_K1, BM25Index, bm25_tokens, stem
from memchat.backends.embed_batch import MicroBatcher
from memchat.backends.embeddings import STEmbeddings
from memchat.backends.memory_index import EmbedCache, Scopes, dense_top, sparse_top
from memchat.backends.scopes import MAX_HELD_DOCS, MAX_SCOPES, VECTORS_IN_MEMORY_MAX, _matvec, _Scope
from memchat.memory.records import (
    BM25_WEIGHT,
    DENSE_WEIGHT,
    Hit,
    MemoryDoc,
    fuse,
    merge_dated,
    msg_id,
)
from memchat.memory.textproc import tokenize

# re-exported: the vector-memory API in one import (records and ranking live in memchat.memory.records,
# the BM25 index in memchat.backends.bm25, the in-process scopes in memchat.backends.scopes and
# memchat.backends.memory_index, shared with the Milvus store)
__all__ = ["BM25_B", "BM25_K1", "BM25_WEIGHT", "DENSE_WEIGHT", "MAX_SCOPES", "VECTORS_IN_MEMORY_MAX", "BM25Index",
           "ChromaMemory", "EmbedderMismatch", "Hit", "MemoryDoc", "VectorMemory", "_Scope",
           "_matvec", "bm25_tokens", "fuse", "make_chroma_client", "msg_id", "stem"]


MARKS_SUFFIX = "-marks"  # the small collection beside the memories that holds the forget mark
FORGET_MARK = "forget"
WRITE_BATCH = 256  # documents per Chroma upsert when concurrent turns' writes are merged


class EmbedderMismatch(RuntimeError):
    """The store was built with another embedder; ``memchat reindex`` re-embeds it."""


class VectorMemory(Protocol):
    """What memchat needs from a vector memory (:class:`ChromaMemory`, :class:`memchat.backends.milvus_store.MilvusMemory`)."""

    def add(self, docs: list[MemoryDoc]) -> None: ...

    def search(self, query: str, user_id: str, thread_id: str | None, k: int,
               min_score: float = 0.0, when: tuple[str, str] | None = None) -> list[Hit]: ...

    def get_ids(self, ids: list[str]) -> list[MemoryDoc]: ...

    def delete_thread(self, thread_id: str) -> int: ...

    def delete_user(self, user_id: str) -> int: ...

    def count(self) -> int: ...

    def scope_counts(self, thread_id: str, user_id: str | None) -> dict[str, int]: ...

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
                 check_embedder: bool = True, cache_docs: int = MAX_HELD_DOCS, marks: bool = True) -> None:
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
        self.cache = EmbedCache(embeddings)
        # Every delete changes one record here, so other processes notice a forget even when their writes
        # kept the memories' count unchanged (:meth:`Scopes._sync`).
        self.marks = client.get_or_create_collection(collection + MARKS_SUFFIX, embedding_function=None) if marks else None
        self.scopes = Scopes(lambda with_vectors: _Scope(embeddings.dim, with_vectors), self._user_ids, self._rows,
                             self.col.count, cache_docs, forgets=self._forget_mark if marks else None)
        self._lock = self.scopes.lock
        self._writes = MicroBatcher(self._write, max_texts=WRITE_BATCH)

    # ---- embeddings -------------------------------------------------------------------------
    def embed_query(self, text: str) -> list[float]:
        """Query vector, cached (:class:`memchat.backends.memory_index.EmbedCache`)."""
        return self.cache.query(text)

    # ---- writes -----------------------------------------------------------------------------
    def add(self, docs: list[MemoryDoc]) -> None:
        """Upsert documents (idempotent ids)."""
        docs = [d for d in docs if d.text.strip()]
        if not docs:
            return
        uniq = {d.id: d for d in docs}
        docs = list(uniq.values())
        vectors = self.cache.docs([d.text for d in docs])
        self._writes(list(zip(docs, vectors)))

    def _write(self, items: list[tuple[MemoryDoc, list[float]]]) -> list[None]:
        """One Chroma upsert for the documents of every ``add`` in flight (:class:`MicroBatcher`: concurrent
        turns' writes go in together, one batch at a time).

        The upsert (SQLite + HNSW in Rust; it holds the GIL, see docs/profile.md) runs outside the scopes' lock, which every
        search takes: under it, each search waited for every write in flight (a loaded 2-core server kept ~1
        core busy), and writes one by one queued behind each other. The ids being added count as ``pending``,
        so that a search meanwhile does not take our own write for another process's."""
        uniq = {d.id: (d, v) for d, v in items}  # the same id from two turns (a user's fact) is stored once
        docs, vectors = [d for d, _ in uniq.values()], [v for _, v in uniq.values()]
        new_ids = self._new_ids(docs)
        try:
            self.col.upsert(ids=[d.id for d in docs], documents=[d.text for d in docs],
                            metadatas=[d.metadata() for d in docs], embeddings=vectors)  # type: ignore[arg-type]
        except BaseException:
            with self._lock:
                self.scopes.pending -= new_ids
            raise
        with self._lock:
            self.scopes.pending -= new_ids
            if self.scopes.seen >= 0:
                self.scopes.seen += new_ids
            for d, v in zip(docs, vectors):
                scope = self.scopes.held(d.user_id)
                if scope is not None:
                    scope.put(d, v)
        return [None] * len(items)

    def _new_ids(self, docs: list[MemoryDoc]) -> int:
        """How many of ``docs`` the store does not hold yet (for the count that detects foreign writes), counted
        as pending: a loaded user's memories are all in process, so only ids of users not loaded are asked."""
        with self._lock:
            new_ids, ask = 0, []
            for d in docs:
                scope = self.scopes.held(d.user_id)
                if scope is None:
                    ask.append(d.id)
                elif d.id not in scope.pos:
                    new_ids += 1
            if ask:
                new_ids += len(ask) - len(self.col.get(ids=ask, include=[])["ids"])
            self.scopes.pending += new_ids
            return new_ids

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
            mark = self.scopes.forgets_seen
            if ids:
                self.col.delete(ids=ids)
                mark = self._new_forget_mark()
            self.scopes.reset(self.col.count(), mark)
            self.cache.clear()
            return len(ids)

    def _forget_mark(self) -> str:
        """The mark the last delete left (any process); "" before the first."""
        if self.marks is None:
            return ""
        got = self.marks.get(ids=[FORGET_MARK], include=["metadatas"])["metadatas"] or [{}]
        return str((got[0] or {}).get("mark", ""))

    def _new_forget_mark(self) -> str | None:
        """Change the forget mark (after the delete: a process that reads the new mark sees the memories gone)."""
        if self.marks is None:
            return None
        mark = uuid.uuid4().hex
        self.marks.upsert(ids=[FORGET_MARK], embeddings=[[0.0]], metadatas=[{"mark": mark}])
        return mark

    def count(self) -> int:
        """Number of stored memories (all users)."""
        return int(self.col.count())

    def scope_counts(self, thread_id: str, user_id: str | None) -> dict[str, int]:
        """A thread's thread-scoped memories and its user's user-scoped ones."""
        thread: Any = {"$and": [{"thread_id": thread_id}, {"scope": "thread"}]}
        out = {"thread": len(self.col.get(where=thread, include=[])["ids"]), "user": 0}
        if user_id:
            user: Any = {"$and": [{"user_id": user_id}, {"scope": "user"}]}
            out["user"] = len(self.col.get(where=user, include=[])["ids"])
        return out

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
        found = self.scopes.find(ids)
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

    def _user_ids(self, user_id: str) -> list[str]:
        where: Any = {"user_id": user_id}
        return list(self.col.get(where=where, include=[])["ids"])

    def _rows(self, ids: list[str], with_vectors: bool) -> Iterable[tuple[MemoryDoc, Any]]:
        include = ["documents", "metadatas"] + (["embeddings"] if with_vectors else [])
        for start in range(0, len(ids), 5000):
            res = self.col.get(ids=ids[start:start + 5000], include=include)  # type: ignore[arg-type]
            got: Any = res.get("embeddings")
            vecs: list[Any] = list(got) if got is not None else [None] * len(res["ids"])
            for i, t, m, v in zip(res["ids"], res["documents"] or [], res["metadatas"] or [], vecs):
                yield MemoryDoc.from_chroma(i, t or "", dict(m or {})), v

    @staticmethod
    def _visible(doc: MemoryDoc, thread_id: str | None) -> bool:
        return thread_id is None or doc.scope == "user" or doc.thread_id == thread_id

    def dense(self, query: str, user_id: str, thread_id: str | None, k: int,
              vector: list[float] | None = None, scope: _Scope | None = None) -> list[tuple[MemoryDoc, float]]:
        """Cosine top-k within the user's (and thread's) scope."""
        vec = vector if vector is not None else self.embed_query(query)
        with self._lock:
            scope = scope if scope is not None else self.scopes.get(user_id)
            if scope.with_vectors:
                return dense_top(scope, vec, thread_id, k)
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
            return sparse_top(scope if scope is not None else self.scopes.get(user_id), q, thread_id, k)

    def search(self, query: str, user_id: str, thread_id: str | None, k: int, min_score: float = 0.0,
               when: tuple[str, str] | None = None) -> list[Hit]:
        """Dense + BM25 over the user's in-process scope, fused by :func:`fuse`; with ``when`` (days a question
        names), the memories of those days ranked among themselves too (:func:`merge_dated`)."""
        vec = self.embed_query(query)
        with self._lock:
            scope = self.scopes.get(user_id)
            dense = self.dense(query, user_id, thread_id, k, vector=vec, scope=scope)
            sparse = self.sparse(query, user_id, thread_id, k, scope=scope)
            if when is not None:
                wd = dense_top(scope, vec, thread_id, k, when) if scope.with_vectors else []
                ws = sparse_top(scope, stem(tokenize(query)), thread_id, k, when)
        hits = fuse(dense, sparse, min_score)
        return merge_dated(hits, wd, ws) if when is not None else hits
