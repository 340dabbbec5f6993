"""The configured vector memory: Chroma (default) or Milvus, chosen by ``MEMCHAT_VECTOR_STORE``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memchat.backends.embeddings import STEmbeddings
from memchat.backends.vectorstore import ChromaMemory, VectorMemory, make_chroma_client
from memchat.settings import Settings


def milvus_uri(settings: Settings) -> str:
    """``MEMCHAT_MILVUS_URI``, or a Milvus Lite file in the data dir."""
    if settings.milvus_uri:
        return settings.milvus_uri
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    return str(Path(settings.data_dir) / "milvus.db")


def where(settings: Settings) -> str:
    """Where the vector memory lives, in words (no secrets)."""
    if settings.vector_store == "milvus":
        uri = milvus_uri(settings)
        kind = "Milvus server" if "://" in uri else "Milvus Lite"
        return f"{kind} at {uri}"
    return (f"Chroma server at {settings.chroma_url}" if settings.chroma_url
            else f"embedded Chroma in {settings.data_dir}/chroma")


def collection_name(settings: Settings) -> str:
    """The collection of the configured store."""
    return settings.milvus_collection if settings.vector_store == "milvus" else settings.chroma_collection


def make_client(settings: Settings) -> Any:
    """A client of the configured store (``chromadb`` client or ``MilvusClient``)."""
    if settings.vector_store == "milvus":
        from memchat.backends.milvus_store import make_milvus_client

        return make_milvus_client(milvus_uri(settings), settings.milvus_token.get_secret_value())
    return make_chroma_client(settings.chroma_url, settings.data_dir)


def make_memory(settings: Settings, embeddings: STEmbeddings, *, client: Any | None = None,
                collection: str | None = None, check_embedder: bool = True) -> VectorMemory:
    """Open the configured store's collection (created when missing)."""
    client = client if client is not None else make_client(settings)
    name = collection or collection_name(settings)
    if settings.vector_store == "milvus":
        from memchat.backends.milvus_store import MilvusMemory

        return MilvusMemory(client, embeddings, name, check_embedder=check_embedder, index=settings.milvus_index,
                            uri=milvus_uri(settings), token=settings.milvus_token.get_secret_value(),
                            search=settings.milvus_search, cache_docs=settings.memory_cache_docs)
    return ChromaMemory(client, embeddings, name, check_embedder=check_embedder, cache_docs=settings.memory_cache_docs)
