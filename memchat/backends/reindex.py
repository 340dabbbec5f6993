"""``memchat reindex``: re-embed the vector store with the configured ``MEMCHAT_EMBEDDING_MODEL``.

The documents and their metadata are read from the current collection and written, with vectors
from the new embedder, into a new collection whose metadata names that embedder. Only when all of
them are in is the new collection swapped in (old renamed aside, new renamed to the configured
name, old dropped); if anything fails before, the old collection is left as it was. Stop the
memchat servers that use the store first and start them again afterwards: a running process keeps
a handle on the old collection.

The same holds for Milvus (``MEMCHAT_VECTOR_STORE=milvus``; collections are renamed with
``rename_collection``). ``memchat reindex --from chroma`` (or ``--from milvus``) copies every memory from
the other kind of store, configured by the same settings, into the configured one, embedding it with the
configured embedder: the way from an embedded Chroma to Milvus and back.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from tqdm import tqdm

from memchat.backends.embeddings import STEmbeddings, embeddings_for
from memchat.backends.stores import make_client, make_memory, where
from memchat.backends.vectorstore import ChromaMemory, MemoryDoc, VectorMemory, make_chroma_client
from memchat.settings import Settings

log = logging.getLogger(__name__)

TMP_SUFFIX = "__reindex"
OLD_SUFFIX = "__pre_reindex"


def _get(client: Any, name: str) -> Any | None:
    """The collection, or None when it does not exist (the exception type differs by Chroma version)."""
    try:
        return client.get_collection(name)
    except Exception as exc:  # noqa: BLE001 - chromadb.errors.NotFoundError / ValueError
        if "does not exist" in str(exc).lower() or "not found" in str(exc).lower() or type(exc).__name__ in (
                "NotFoundError", "InvalidCollectionException"):
            return None
        raise


def _drop(client: Any, name: str) -> None:
    if _get(client, name) is not None:
        client.delete_collection(name)


def reindex(settings: Settings, batch: int = 256, *, progress: bool = True,
            embeddings: STEmbeddings | None = None, client: Any | None = None) -> int:
    """Re-embed every memory of ``settings.chroma_collection``; return how many were re-embedded.

    Works on the embedded store and on a Chroma server alike. Afterwards the store opens with the
    configured embedder (no :class:`~memchat.backends.vectorstore.EmbedderMismatch`).
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    emb = embeddings or embeddings_for(settings)
    if settings.vector_store == "milvus":
        return _reindex_milvus(settings, emb, batch, progress, client)
    client = client or make_chroma_client(settings.chroma_url, settings.data_dir)
    name = settings.chroma_collection
    tmp_name, old_name = name + TMP_SUFFIX, name + OLD_SUFFIX

    old = _get(client, name)
    if old is None:
        leftover = _get(client, old_name)
        if leftover is None:
            # Nothing stored yet: just create the collection with the new embedder's identity.
            ChromaMemory(client, emb, collection=name, check_embedder=False)
            return 0
        old = leftover  # a previous run stopped between the two renames
        old.modify(name=name)
    _drop(client, tmp_name)  # leftovers of an interrupted run

    ids: list[str] = list(old.get(include=[])["ids"])
    before = (old.metadata or {}).get("embedder")
    log.info("re-embedding %d memories of %r from %r to %r", len(ids), name, before, emb.identity)
    new = ChromaMemory(client, emb, collection=tmp_name, check_embedder=False, marks=False).col
    try:
        with tqdm(total=len(ids), desc=f"re-embedding with {emb.identity}", unit="doc", disable=not progress) as bar:
            for start in range(0, len(ids), batch):
                res = old.get(ids=ids[start:start + batch], include=["documents", "metadatas"])
                got_ids = list(res["ids"])
                texts = [t or "" for t in (res["documents"] or [])]
                metas: list[Any] = [dict(m) if m else {"kind": "turn"} for m in (res["metadatas"] or [])]
                if got_ids:
                    new.upsert(ids=got_ids, documents=texts, metadatas=metas,
                               embeddings=emb.embed_documents(texts))  # type: ignore[arg-type]
                bar.update(len(got_ids))
        if new.count() != len(ids):
            raise RuntimeError(f"re-embedded {new.count()} of {len(ids)} memories; the store was left unchanged")
    except BaseException:
        with contextlib.suppress(Exception):
            client.delete_collection(tmp_name)
        raise

    # swap: old aside, new in, old dropped
    _drop(client, old_name)
    old.modify(name=old_name)
    try:
        new.modify(name=name)
    except BaseException:
        old.modify(name=name)
        raise
    client.delete_collection(old_name)
    return len(ids)


def _copy(docs: list[MemoryDoc], target: VectorMemory, batch: int, progress: bool, desc: str) -> None:
    with tqdm(total=len(docs), desc=desc, unit="doc", disable=not progress) as bar:
        for start in range(0, len(docs), batch):
            target.add(docs[start:start + batch])
            bar.update(len(docs[start:start + batch]))


def _reindex_milvus(settings: Settings, emb: STEmbeddings, batch: int, progress: bool, client: Any | None) -> int:
    """The same swap as for Chroma, on Milvus collections."""
    from memchat.backends.milvus_store import MilvusMemory

    client = client if client is not None else make_client(settings)
    name = settings.milvus_collection
    tmp_name, old_name = name + TMP_SUFFIX, name + OLD_SUFFIX
    if not client.has_collection(name):
        if not client.has_collection(old_name):
            make_memory(settings, emb, client=client, check_embedder=False)
            return 0
        client.rename_collection(old_name, name)  # a previous run stopped between the two renames
    if client.has_collection(tmp_name):
        client.drop_collection(tmp_name)
    docs = [d for d in make_memory(settings, emb, client=client, check_embedder=False).all_docs() if d.text.strip()]
    new = make_memory(settings, emb, client=client, collection=tmp_name, check_embedder=False)
    assert isinstance(new, MilvusMemory)
    try:
        _copy(docs, new, batch, progress, f"re-embedding with {emb.identity}")
        if new.count() != len(docs):
            raise RuntimeError(f"re-embedded {new.count()} of {len(docs)} memories; the store was left unchanged")
    except BaseException:
        with contextlib.suppress(Exception):
            client.drop_collection(tmp_name)
        raise
    if client.has_collection(old_name):
        client.drop_collection(old_name)
    client.rename_collection(name, old_name)
    try:
        client.rename_collection(tmp_name, name)
    except BaseException:
        client.rename_collection(old_name, name)
        raise
    client.drop_collection(old_name)
    return len(docs)


def copy_store(settings: Settings, source_kind: str, batch: int = 256, *, progress: bool = True,
               embeddings: STEmbeddings | None = None) -> int:
    """Copy every memory of the ``source_kind`` store into the configured one (re-embedded); return how many.

    Ids are kept, so copying twice adds nothing. The source is left as it was.
    """
    source = settings.model_copy(update={"vector_store": source_kind})
    if source_kind == settings.vector_store:
        raise ValueError(f"--from {source_kind}: that is the configured store itself ({where(settings)})")
    emb = embeddings or embeddings_for(settings)
    docs = [d for d in make_memory(source, emb, check_embedder=False).all_docs() if d.text.strip()]
    log.info("copying %d memories from %s to %s", len(docs), where(source), where(settings))
    target = make_memory(settings, emb)
    _copy(docs, target, batch, progress, f"copying into {settings.vector_store} with {emb.identity}")
    return len(docs)
