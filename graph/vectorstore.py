"""Vector memory: Chroma (embedded or server) + BM25, fused, scoped by user and thread."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import bm25s
import chromadb
from langchain_chroma import Chroma

from graph.embeddings import STEmbeddings
from graph.textproc import tokenize

RRF_K = 60
logging.getLogger("bm25s").setLevel(logging.WARNING)


class EmbedderMismatch(RuntimeError):
    """The store was built with another embedder; ``memchat reindex`` re-embeds it."""


@dataclass
class MemoryDoc:
    """One stored memory: a raw message or an extracted fact."""

    id: str
    text: str
    user_id: str
    thread_id: str
    kind: str  # "turn" | "fact"
    speaker: str = "user"
    turn: int = 0
    seq: int = 0  # position in the thread's message stream (neighbour expansion)
    date: str = ""
    scope: str = "thread"  # "thread" | "user"
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """Flat metadata for Chroma."""
        meta: dict[str, Any] = dict(
            user_id=self.user_id, thread_id=self.thread_id, kind=self.kind, speaker=self.speaker,
            turn=self.turn, seq=self.seq, date=self.date, scope=self.scope,
        )
        meta.update({k: v for k, v in self.extra.items() if isinstance(v, (str, int, float, bool))})
        return meta

    @classmethod
    def from_chroma(cls, id_: str, text: str, meta: dict[str, Any]) -> MemoryDoc:
        """Rebuild from a Chroma row."""
        base = {"user_id", "thread_id", "kind", "speaker", "turn", "seq", "date", "scope"}
        return cls(
            id=id_, text=text, user_id=str(meta.get("user_id", "")), thread_id=str(meta.get("thread_id", "")),
            kind=str(meta.get("kind", "turn")), speaker=str(meta.get("speaker", "")), turn=int(meta.get("turn", 0)),
            seq=int(meta.get("seq", 0)), date=str(meta.get("date", "")), scope=str(meta.get("scope", "thread")),
            extra={k: v for k, v in meta.items() if k not in base},
        )


@dataclass
class Hit:
    """A retrieved memory with its fused score."""

    doc: MemoryDoc
    score: float
    dense: float | None = None
    bm25: float | None = None
    neighbour_of: str | None = None


def msg_id(thread_id: str, seq: int) -> str:
    """Deterministic id of a raw message (a retried turn upserts, never duplicates)."""
    return f"msg:{thread_id}:{seq}"


class VectorMemory(Protocol):
    """What memchat needs from a vector memory."""

    def add(self, docs: list[MemoryDoc]) -> None: ...

    def search(self, query: str, user_id: str, thread_id: str | None, k: int) -> list[Hit]: ...

    def get_ids(self, ids: list[str]) -> list[MemoryDoc]: ...

    def delete_thread(self, thread_id: str) -> int: ...

    def delete_user(self, user_id: str) -> int: ...

    def count(self) -> int: ...


@dataclass
class _Scope:
    ids: list[str]
    docs: list[MemoryDoc]
    tokens: list[list[str]]
    index: bm25s.BM25 | None = None


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
    """Hybrid memory over one Chroma collection (cosine space)."""

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
        self._scopes: dict[str, _Scope] = {}
        self._known_count = -1

    # ---- writes -----------------------------------------------------------------------------
    def add(self, docs: list[MemoryDoc]) -> None:
        """Upsert documents (idempotent ids)."""
        docs = [d for d in docs if d.text.strip()]
        if not docs:
            return
        uniq = {d.id: d for d in docs}
        docs = list(uniq.values())
        vectors = self.embeddings.embed_documents([d.text for d in docs])
        with self._lock:
            before = self.col.count()
            self.col.upsert(ids=[d.id for d in docs], documents=[d.text for d in docs],
                            metadatas=[d.metadata() for d in docs], embeddings=vectors)  # type: ignore[arg-type]
            after = self.col.count()
            if self._known_count == before:
                self._known_count = after
                for d in docs:
                    self._add_to_scope(d, fresh=after - before == len(docs))
            else:
                self._invalidate()

    def _add_to_scope(self, doc: MemoryDoc, fresh: bool) -> None:
        scope = self._scopes.get(doc.user_id)
        if scope is None:
            return
        if not fresh and doc.id in scope.ids:
            i = scope.ids.index(doc.id)
            scope.docs[i] = doc
            scope.tokens[i] = tokenize(doc.text)
        else:
            scope.ids.append(doc.id)
            scope.docs.append(doc)
            scope.tokens.append(tokenize(doc.text))
        scope.index = None

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
            return len(ids)

    def count(self) -> int:
        """Number of stored memories (all users)."""
        return int(self.col.count())

    # ---- reads ------------------------------------------------------------------------------
    def get_ids(self, ids: list[str]) -> list[MemoryDoc]:
        """Fetch documents by id (missing ids are skipped)."""
        if not ids:
            return []
        res = self.col.get(ids=ids, include=["documents", "metadatas"])
        return [MemoryDoc.from_chroma(i, t or "", dict(m or {}))
                for i, t, m in zip(res["ids"], res["documents"] or [], res["metadatas"] or [])]

    def all_docs(self, where: Any | None = None) -> list[MemoryDoc]:
        """All documents (optionally filtered), for BM25 and re-indexing."""
        res = self.col.get(where=where, include=["documents", "metadatas"])
        return [MemoryDoc.from_chroma(i, t or "", dict(m or {}))
                for i, t, m in zip(res["ids"], res["documents"] or [], res["metadatas"] or [])]

    def _scope(self, user_id: str) -> _Scope:
        with self._lock:
            total = self.col.count()
            if total != self._known_count:
                self._scopes.clear()
                self._known_count = total
            scope = self._scopes.get(user_id)
            if scope is None:
                docs = self.all_docs({"user_id": user_id})
                scope = _Scope(ids=[d.id for d in docs], docs=docs, tokens=[tokenize(d.text) for d in docs])
                self._scopes[user_id] = scope
            if scope.index is None and scope.docs:
                index = bm25s.BM25()
                index.index([t or ["∅"] for t in scope.tokens], show_progress=False)
                scope.index = index
            return scope

    @staticmethod
    def _visible(doc: MemoryDoc, thread_id: str | None) -> bool:
        return thread_id is None or doc.scope == "user" or doc.thread_id == thread_id

    def dense(self, query: str, user_id: str, thread_id: str | None, k: int) -> list[tuple[MemoryDoc, float]]:
        """Cosine top-k within the user's (and thread's) scope."""
        where: Any = {"user_id": user_id}
        if thread_id is not None:
            where = {"$and": [{"user_id": user_id}, {"$or": [{"scope": "user"}, {"thread_id": thread_id}]}]}
        vec = self.embeddings.embed_query(query)
        res = self.col.query(query_embeddings=[vec], n_results=max(1, k), where=where,  # type: ignore[arg-type]
                             include=["documents", "metadatas", "distances"])
        out = []
        for i, t, m, d in zip(res["ids"][0], (res["documents"] or [[]])[0], (res["metadatas"] or [[]])[0],
                              (res["distances"] or [[]])[0]):
            out.append((MemoryDoc.from_chroma(i, t or "", dict(m or {})), 1.0 - float(d)))
        return out

    def sparse(self, query: str, user_id: str, thread_id: str | None, k: int) -> list[tuple[MemoryDoc, float]]:
        """BM25 top-k within the same scope."""
        q = tokenize(query)
        if not q:
            return []
        with self._lock:
            scope = self._scope(user_id)
            if scope.index is None:
                return []
            n = len(scope.docs)
            idx, scores = scope.index.retrieve([q], k=min(n, max(k * 3, k)), show_progress=False, n_threads=1)
            out: list[tuple[MemoryDoc, float]] = []
            for i, s in zip(idx[0], scores[0]):
                if s <= 0:
                    break
                doc = scope.docs[int(i)]
                if self._visible(doc, thread_id):
                    out.append((doc, float(s)))
                if len(out) >= k:
                    break
            return out

    def search(self, query: str, user_id: str, thread_id: str | None, k: int, min_score: float = 0.0) -> list[Hit]:
        """Dense + BM25 fused with reciprocal rank fusion; dense-only hits need ``min_score``."""
        dense = self.dense(query, user_id, thread_id, k)
        sparse = self.sparse(query, user_id, thread_id, k)
        hits: dict[str, Hit] = {}
        for rank, (doc, s) in enumerate(dense):
            h = hits.setdefault(doc.id, Hit(doc=doc, score=0.0))
            h.dense = s
            h.score += 1.0 / (RRF_K + rank + 1)
        for rank, (doc, s) in enumerate(sparse):
            h = hits.setdefault(doc.id, Hit(doc=doc, score=0.0))
            h.bm25 = s
            h.score += 1.0 / (RRF_K + rank + 1)
        kept = [h for h in hits.values() if h.bm25 is not None or (h.dense or 0.0) >= min_score]
        return sorted(kept, key=lambda h: -h.score)
