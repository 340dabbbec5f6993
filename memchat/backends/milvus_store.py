"""Vector memory on Milvus: Milvus Lite (a local file) or Milvus standalone / cluster (``http://host:19530``).

The same contract as :class:`memchat.backends.vectorstore.ChromaMemory` (see :class:`memchat.backends.vectorstore.VectorMemory`):
user/thread scoping, deterministic ids (upserts), delete thread / user, lookup by id for neighbours,
embedder-mismatch refusal, counting.

Why ``pymilvus`` directly and not ``langchain_milvus.Milvus``: memchat needs a fixed schema with typed,
indexed scalar fields (``user_id`` as the partition key, ``thread_id``, ``scope``, ``seq``), upserts by
its own ids, deletes by filter, the collection's properties (the embedder's identity) and the
per-retriever scores of the dense and the BM25 search, which it fuses itself. The LangChain wrapper
hides the schema behind its own defaults and returns only one fused list, so here it would add a layer
and take away what the contract needs; ``langchain_milvus`` stays available for applications that want a
LangChain retriever over the same collection (:meth:`MilvusMemory.as_langchain`).

Hybrid search. When the server has BM25 full-text search (Milvus >= 2.5, and Milvus Lite), the BM25
index lives in Milvus: a ``BM25`` function turns the stemmed tokens of each memory (memchat's own
tokenizer, jieba for Chinese, Snowball stems) into a sparse vector server-side, and a query runs a
dense and a BM25 search there, filtered by user and thread. Only the two top-k lists come back; memchat
adds their normalized scores with the same weights as for Chroma, so no process keeps a per-user index
and replicas share nothing but Milvus ("server" search, the default for a server URL). A Milvus Lite
file, and a Milvus without full-text search (< 2.5, no sparse field), search in process instead:
:class:`memchat.backends.milvus_local.LocalIndex` ("process" search; why in its module).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any

from memchat.backends.embeddings import STEmbeddings
from memchat.backends.memory_index import EmbedCache
from memchat.backends.milvus_local import LocalIndex
from memchat.backends.scopes import MAX_HELD_DOCS
from memchat.backends.vectorstore import EmbedderMismatch, Hit, MemoryDoc, bm25_tokens, fuse, stem
from memchat.memory.records import merge_dated
from memchat.memory.textproc import tokenize

MAX_VARCHAR = 65_535  # bytes, Milvus' largest VARCHAR
PAGE = 1000
SCALARS = ("user_id", "thread_id", "kind", "speaker", "scope", "date")
OUTPUT = ["id", "text", *SCALARS, "turn", "seq", "extra"]
EMBEDDER_KEY = "memchat.embedder"
DIM_KEY = "memchat.dim"


def quote(value: str) -> str:
    """A Milvus filter string literal (double quotes, backslash escapes)."""
    return json.dumps(str(value), ensure_ascii=False)


def _cut(text: str, limit: int = MAX_VARCHAR) -> str:
    """Text cut to ``limit`` UTF-8 bytes at a character boundary (Milvus' VARCHAR limit)."""
    raw = text.encode("utf-8")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def bm25_text(tokens: list[str]) -> str:
    """memchat's BM25 tokens as text that Milvus' standard analyzer splits back into the same tokens."""
    return _cut(" ".join(re.sub(r"\W", "_", t) for t in tokens))


def full_text_supported(version: str) -> bool:
    """Milvus Lite and Milvus >= 2.5 have the BM25 function."""
    v = version.lower()
    if "lite" in v:
        return True
    m = re.search(r"(\d+)\.(\d+)", v)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (2, 5)


class _QuietLite(logging.Filter):
    """Milvus Lite's in-process gRPC server logs an ERROR with a traceback for every RPC it lacks
    (``AllocTimestamp``, which pymilvus calls once while an index is built); pymilvus copes, so drop them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Method not implemented" not in record.getMessage() and "not implemented" not in str(record.exc_info)


def make_milvus_client(uri: str, token: str = "") -> Any:
    """A ``MilvusClient``: a local path runs Milvus Lite in this process, a URL reaches a server."""
    from pymilvus import MilvusClient

    if "://" not in uri:
        grpc_log = logging.getLogger("grpc._server")
        if not any(isinstance(f, _QuietLite) for f in grpc_log.filters):
            grpc_log.addFilter(_QuietLite())

    return MilvusClient(uri=uri, token=token) if token else MilvusClient(uri=uri)


class MilvusMemory:
    """Hybrid memory over one Milvus collection (cosine dense vectors, BM25 sparse vectors)."""

    def __init__(self, client: Any, embeddings: STEmbeddings, collection: str = "memchat",
                 check_embedder: bool = True, index: str = "", uri: str = "", token: str = "",
                 search: str = "auto", cache_docs: int = MAX_HELD_DOCS) -> None:
        self.client = client
        self.uri, self.token = uri, token
        self.embeddings = embeddings
        self.collection_name = collection
        self.server_version = str(client.get_server_version())
        self.lite = "lite" in self.server_version.lower()
        self._lock = threading.RLock()
        self.cache = EmbedCache(embeddings)
        self.index = index or ("FLAT" if self.lite else "HNSW")
        if not client.has_collection(collection):
            self._create(full_text_supported(self.server_version))
        desc = client.describe_collection(collection)
        props = desc.get("properties") or {}
        self.full_text = any(f["name"] == "sparse" for f in desc.get("fields", []))
        lite_file = bool(uri) and "://" not in uri
        in_process = not self.full_text or search == "process" or (search == "auto" and lite_file)
        self.local = LocalIndex(self, exact=lite_file, max_docs=cache_docs) if in_process else None
        built = props.get(EMBEDDER_KEY)
        if check_embedder and built and built != embeddings.identity:
            raise EmbedderMismatch(
                f"vector store {collection!r} was built with embedder {built!r}, but MEMCHAT_EMBEDDING_MODEL is "
                f"{embeddings.identity!r}; run `memchat reindex` to re-embed it")
        self.embedder = built or embeddings.identity
        self.dim = int(props.get(DIM_KEY) or embeddings.dim)
        client.load_collection(collection)

    def _create(self, full_text: bool) -> None:
        from pymilvus import DataType, Function, FunctionType

        c = self.client
        s = c.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("id", DataType.VARCHAR, is_primary=True, max_length=1024)
        s.add_field("user_id", DataType.VARCHAR, max_length=512, is_partition_key=True)
        for name in SCALARS[1:]:
            s.add_field(name, DataType.VARCHAR, max_length=512)
        s.add_field("turn", DataType.INT64)
        s.add_field("seq", DataType.INT64)
        s.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR)
        s.add_field("extra", DataType.JSON)
        s.add_field("vector", DataType.FLOAT_VECTOR, dim=self.embeddings.dim)
        ip = c.prepare_index_params()
        params = {"M": 16, "efConstruction": 200} if self.index == "HNSW" else {}
        ip.add_index("vector", index_type=self.index, metric_type="COSINE", params=params)
        if full_text:
            s.add_field("bm25_text", DataType.VARCHAR, max_length=MAX_VARCHAR, enable_analyzer=True,
                        analyzer_params={"tokenizer": "standard"})
            s.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            s.add_function(Function(name="bm25", function_type=FunctionType.BM25,
                                    input_field_names=["bm25_text"], output_field_names=["sparse"]))
            ip.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                         params={"bm25_k1": 1.5, "bm25_b": 0.75})
        if not self.lite:  # Milvus Lite filters without scalar indexes
            for name in ("thread_id", "scope"):
                ip.add_index(name, index_type="INVERTED")
        c.create_collection(self.collection_name, schema=s, index_params=ip, consistency_level="Strong",
                            properties={EMBEDDER_KEY: self.embeddings.identity, DIM_KEY: str(self.embeddings.dim)})

    # ---- embeddings -------------------------------------------------------------------------
    def embed_query(self, text: str) -> list[float]:
        """Query vector, cached (:class:`memchat.backends.memory_index.EmbedCache`)."""
        return self.cache.query(text)

    # ---- rows ---------------------------------------------------------------------------------
    def _row(self, d: MemoryDoc, vec: list[float]) -> dict[str, Any]:
        row: dict[str, Any] = {k: _cut(str(getattr(d, k)), 512) for k in SCALARS}
        row.update(id=d.id, turn=int(d.turn), seq=int(d.seq), text=_cut(d.text), vector=vec,
                   extra={k: v for k, v in d.extra.items() if isinstance(v, (str, int, float, bool))})
        if self.full_text:
            row["bm25_text"] = bm25_text(bm25_tokens(d))
        return row

    @staticmethod
    def _doc(r: dict[str, Any]) -> MemoryDoc:
        e = r.get("entity", r)
        meta = {k: e.get(k) for k in (*SCALARS, "turn", "seq") if e.get(k) is not None}
        meta.update(e.get("extra") or {})
        return MemoryDoc.from_chroma(str(r.get("id", e.get("id"))), str(e.get("text") or ""), meta)

    # ---- writes -------------------------------------------------------------------------------
    def add(self, docs: list[MemoryDoc]) -> None:
        """Upsert documents (idempotent ids)."""
        uniq = {d.id: d for d in docs if d.text.strip()}
        if not uniq:
            return
        docs = list(uniq.values())
        vectors = self.cache.docs([d.text for d in docs])
        self.client.upsert(self.collection_name, [self._row(d, v) for d, v in zip(docs, vectors)])
        if self.local is not None:
            self.local.wrote(docs, vectors)

    def delete_thread(self, thread_id: str) -> int:
        """Forget a thread's thread-scoped memories."""
        return self._delete(f"thread_id == {quote(thread_id)} and scope == \"thread\"")

    def delete_user(self, user_id: str) -> int:
        """Forget everything stored for a user."""
        return self._delete(f"user_id == {quote(user_id)}")

    def _delete(self, expr: str) -> int:
        with self._lock:
            n = self._count(expr)
            if n:
                self.client.delete(self.collection_name, filter=expr)
            self.cache.clear()
            if self.local is not None:
                self.local.deleted()
            return n

    def _count(self, expr: str = "") -> int:
        res = self.client.query(self.collection_name, filter=expr, output_fields=["count(*)"])
        return int(res[0]["count(*)"]) if res else 0

    def count(self) -> int:
        """Number of stored memories (all users)."""
        return self._count()

    def scope_counts(self, thread_id: str, user_id: str | None) -> dict[str, int]:
        """A thread's thread-scoped memories and its user's user-scoped ones."""
        out = {"thread": self._count(f'thread_id == {quote(thread_id)} and scope == "thread"'), "user": 0}
        if user_id:
            out["user"] = self._count(f'user_id == {quote(user_id)} and scope == "user"')
        return out

    # ---- reads --------------------------------------------------------------------------------
    def ids(self, expr: str = "") -> list[str]:
        """Ids of the documents matching ``expr`` (all when empty)."""
        rows = self.client.query(self.collection_name, filter=expr or 'id != ""', output_fields=["id"])
        return sorted(str(r["id"]) for r in rows)

    def fetch(self, ids: list[str], vectors: bool = False) -> list[tuple[MemoryDoc, list[float] | None]]:
        """Documents (and their vectors) by id, in batches; the filter is built here because pymilvus'
        ``get`` does not escape backslashes in string ids."""
        out: list[tuple[MemoryDoc, list[float] | None]] = []
        fields = OUTPUT + (["vector"] if vectors else [])
        for start in range(0, len(ids), PAGE):
            expr = "id in [" + ", ".join(quote(i) for i in ids[start:start + PAGE]) + "]"
            for r in self.client.query(self.collection_name, filter=expr, output_fields=fields):
                out.append((self._doc(r), list(r["vector"]) if vectors else None))
        return out

    def get_ids(self, ids: list[str]) -> list[MemoryDoc]:
        """Fetch documents by id (missing ids are skipped), in the order asked; from the in-process scopes
        when they hold them (a Lite file: every writer is in this process), else from Milvus."""
        found = self.local.scopes.find(ids, sync=True) if self.local is not None and self.local.exact else {}
        rest = [i for i in dict.fromkeys(ids) if i not in found]
        if rest:
            found.update({d.id: d for d, _ in self.fetch(rest)})
        return [found[i] for i in ids if i in found]

    def all_docs(self, where: str = "") -> list[MemoryDoc]:
        """All documents (optionally filtered by a Milvus expression), for re-indexing and copying."""
        return [d for d, _ in self.fetch(self.ids(where))]

    @staticmethod
    def scope_filter(user_id: str, thread_id: str | None, when: tuple[str, str] | None = None) -> str:
        """A user's memories; with a thread, its thread-scoped ones and the user-scoped ones; with ``when``, those
        stored within those days (``date`` is ``YYYY-MM-DD HH:MM``, compared as text)."""
        expr = f"user_id == {quote(user_id)}"
        if thread_id is not None:
            expr = f"{expr} and (scope == \"user\" or thread_id == {quote(thread_id)})"
        if when is not None:
            expr = f"{expr} and date >= {quote(when[0])} and date <= {quote(when[1] + '~')}"
        return expr

    def _search(self, data: Any, field: str, expr: str, k: int, params: dict[str, Any]) -> list[tuple[MemoryDoc, float]]:
        res = self.client.search(self.collection_name, data=[data], anns_field=field, limit=max(1, k), filter=expr,
                                 output_fields=OUTPUT, search_params=params)
        return [(self._doc(r), abs(float(r["distance"]))) for r in (res[0] if res else [])]

    def dense(self, query: str, user_id: str, thread_id: str | None, k: int,
              vector: list[float] | None = None, when: tuple[str, str] | None = None) -> list[tuple[MemoryDoc, float]]:
        """Cosine top-k within the user's (and thread's) scope, within the ``when`` days when given."""
        vec = vector if vector is not None else self.embed_query(query)
        if self.local is not None:
            got = self.local.dense(vec, user_id, thread_id, k, when)
            if got is not None:
                return got
        params: dict[str, Any] = {"metric_type": "COSINE"}
        if self.index == "HNSW":
            params["params"] = {"ef": max(64, 2 * k)}
        return self._search(vec, "vector", self.scope_filter(user_id, thread_id, when), k, params)

    def sparse(self, query: str, user_id: str, thread_id: str | None, k: int,
               when: tuple[str, str] | None = None) -> list[tuple[MemoryDoc, float]]:
        """BM25 top-k within the same scope: in Milvus ("server" search) or in process."""
        toks = stem(tokenize(query))
        if not toks:
            return []
        if self.local is not None:
            return self.local.sparse(toks, user_id, thread_id, k, when)
        hits = self._search(bm25_text(toks), "sparse", self.scope_filter(user_id, thread_id, when), k,
                            {"metric_type": "BM25"})
        return [(d, s) for d, s in hits if s > 0]

    def search(self, query: str, user_id: str, thread_id: str | None, k: int, min_score: float = 0.0,
               when: tuple[str, str] | None = None) -> list[Hit]:
        """Dense + BM25, fused as for Chroma (:func:`memchat.backends.vectorstore.fuse`), and with ``when`` the
        memories of those days ranked among themselves too (:func:`merge_dated`)."""
        vec = self.embed_query(query)
        hits = fuse(self.dense(query, user_id, thread_id, k, vector=vec), self.sparse(query, user_id, thread_id, k),
                    min_score)
        if when is None:
            return hits
        return merge_dated(hits, self.dense(query, user_id, thread_id, k, vector=vec, when=when),
                           self.sparse(query, user_id, thread_id, k, when=when))

    def describe(self) -> str:
        """Backend, collection, dimension and count (for ``memchat check``)."""
        path = ("search in Milvus (dense + full-text BM25)" if self.local is None else
                "search in process (dense + BM25)" if self.full_text else
                "search in process (dense + BM25; no full-text search in this Milvus)")
        return (f"{self.server_version}, collection {self.collection_name!r} ({self.index}, {self.dim} dims, "
                f"{path}) with {self.count()} memories; embedder {self.embedder}")

    def as_langchain(self, **kw: Any) -> Any:
        """A ``langchain_milvus.Milvus`` over this collection (dense search only), for LangChain apps."""
        from langchain_milvus import Milvus

        args = {"uri": self.uri, **({"token": self.token} if self.token else {})}
        return Milvus(embedding_function=self.embeddings, collection_name=self.collection_name, connection_args=args,
                      vector_field="vector", text_field="text", primary_field="id", auto_id=False, **kw)
