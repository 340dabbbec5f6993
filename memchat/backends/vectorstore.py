"""Vector memory: Chroma (embedded or server) + BM25, fused, scoped by user and thread."""

from __future__ import annotations

import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import chromadb
import numpy as np
from langchain_chroma import Chroma

from memchat.backends.embeddings import STEmbeddings
from memchat.memory.textproc import tokenize

# Fusion: each retriever's scores are normalized to [0, 1] over its own candidates (dense: min-max of
# the cosine, BM25: share of the best score) and added with these weights. BM25 gets the larger weight:
# names, places and rare words decide most memory questions, and the small default embedder is weak.
DENSE_WEIGHT = 1.0
BM25_WEIGHT = 1.5
BM25_K1 = 1.5
BM25_B = 0.75
MAX_SCOPES = 32  # users whose memories are kept in process (least recently used are dropped)
VECTORS_IN_MEMORY_MAX = 100_000  # above this many memories a user's dense search goes to Chroma
QUERY_CACHE = 64
SMALL_BATCH = 8  # up to this many texts are embedded on one torch thread


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
        self.user_scope[i] = doc.scope == "user"
        self.thread_code[i] = self.codes.setdefault(doc.thread_id, len(self.codes))
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

    def visible(self, thread_id: str | None) -> np.ndarray:
        """Mask of live slots visible from ``thread_id`` (all the user's when ``None``)."""
        n = self.bm25.size
        mask = self.bm25.alive[:n].copy()
        if thread_id is not None:
            code = self.codes.get(thread_id, -1)
            mask &= self.user_scope[:n] | (self.thread_code[:n] == code)
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


@contextmanager
def _few_threads(active: bool = True) -> Iterator[None]:
    """Embed a few short texts on one torch thread.

    For a message or two, more threads buy nothing but synchronisation, and on a busy machine (an
    LLM server on the same cores) a multi-threaded forward pass waits for every thread: measured on 2
    cores next to other work, p95 of one query embedding 369 ms with 2 threads, 23 ms with 1.
    Batches (pre-fills, re-indexing) keep torch's setting.
    """
    if not active:
        yield
        return
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    with _torch_lock:
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(old)


_torch_lock = threading.Lock()


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


def fuse(dense: list[tuple[MemoryDoc, float]], sparse: list[tuple[MemoryDoc, float]], min_score: float) -> list[Hit]:
    """Dense + BM25, each normalized over its candidates and added with weights; dense-only hits
    need a cosine of at least ``min_score``. Shared by every store, so both rank alike."""
    hits: dict[str, Hit] = {}
    if dense:
        hi, lo = dense[0][1], dense[-1][1]
        span = hi - lo
        for doc, s in dense:
            h = hits.setdefault(doc.id, Hit(doc=doc, score=0.0))
            h.dense = s
            h.score += DENSE_WEIGHT * ((s - lo) / span if span > 1e-9 else 1.0)
    if sparse:
        top = sparse[0][1]
        for doc, s in sparse:
            h = hits.setdefault(doc.id, Hit(doc=doc, score=0.0))
            h.bm25 = s
            h.score += BM25_WEIGHT * s / top
    kept = [h for h in hits.values() if h.bm25 is not None or (h.dense or 0.0) >= min_score]
    return sorted(kept, key=lambda h: (-h.score, h.doc.id))
