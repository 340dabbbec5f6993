"""The embedder's ONNX Runtime path: the same vectors as sentence-transformers, or not used at all."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from memchat.backends import embed_onnx
from memchat.backends.embeddings import EmbedderLoadError, STEmbeddings, default_model_path, load_embeddings

TEXTS = ["What is my order number?", "我对花生过敏。", "Melanie: I painted a sunrise last week, it relaxed me.",
         "ok", " ".join(["words beyond the window"] * 120)]


def test_live_batches_run_on_onnx_runtime_with_the_same_vectors() -> None:
    emb = load_embeddings()
    assert emb.backend == "onnx"
    got = np.asarray(emb.embed_documents(TEXTS))
    want = emb.model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    assert got.shape == want.shape and float(np.abs(got - want).max()) < 1e-4
    assert np.allclose(emb.embed_query(TEXTS[0]), want[0], atol=1e-4)


def test_other_pipelines_and_failures_keep_pytorch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    model = load_embeddings().model
    assert embed_onnx._pipeline(list(model)[:1]) is None  # no pooling module: not ours to rebuild
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def broken(*args: object) -> list[str]:
        raise RuntimeError("export failed")

    monkeypatch.setattr(embed_onnx, "_export", broken)
    with caplog.at_level(logging.WARNING, logger="memchat.embeddings"):
        emb = STEmbeddings(default_model_path())  # not cached under tmp_path: would export
    assert emb.backend == "torch" and "export failed" in caplog.text
    assert len(emb.embed_query("still works")) == emb.dim
    assert STEmbeddings(backend="torch").backend == "torch"
    with pytest.raises(EmbedderLoadError, match="ONNX Runtime"):
        STEmbeddings(default_model_path(), backend="onnx")


def test_a_wrong_export_is_caught_at_load(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(embed_onnx.OnnxEncoder, "_run", lambda self, texts: np.ones((len(texts), 384), np.float32))
    with caplog.at_level(logging.WARNING, logger="memchat.embeddings"):
        emb = STEmbeddings(default_model_path())
    assert emb.backend == "torch" and "differs" in caplog.text


def test_auto_uses_onnx_only_with_several_workers(tmp_path: Path) -> None:
    """One process keeps PyTorch (ONNX Runtime measured slower there); ``--workers 2`` runs ONNX Runtime."""
    from memchat.backends.embeddings import embeddings_for
    from memchat.settings import Settings

    one = Settings(data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    assert embeddings_for(one).backend == "torch"
    assert embeddings_for(one.model_copy(update={"workers": 2})).backend == "onnx"
    assert embeddings_for(one.model_copy(update={"workers": 2, "embedding_backend": "torch"})).backend == "torch"
    assert embeddings_for(one.model_copy(update={"embedding_backend": "onnx"})).backend == "onnx"
