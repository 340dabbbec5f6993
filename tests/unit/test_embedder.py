"""Embedder by name: default MiniLM, BGE query prefix, clear load errors, mismatch detection, reindex."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from memchat.backends.embeddings import (
    DEFAULT_IDENTITY,
    EmbedderLoadError,
    STEmbeddings,
    default_model_path,
    default_query_prefix,
    load_embeddings,
)
from memchat.backends.engine import Engine
from memchat.backends.reindex import OLD_SUFFIX, TMP_SUFFIX, reindex
from memchat.backends.vectorstore import (
    MARKS_SUFFIX,
    ChromaMemory,
    EmbedderMismatch,
    MemoryDoc,
    make_chroma_client,
)
from memchat.settings import Settings
from tests.support.fakes import ScriptedChatModel
from tests.support.services import ChromaServer, free_port, unique_name

pytest_plugins = ["tests.support.services"]  # chroma_server
pytestmark = pytest.mark.timeout(180)

BGE_EN = "Represent this sentence for searching relevant passages: "


def make_small_model(dest: Path) -> Path:
    """A genuinely different sentence-transformers model, made offline from the shipped MiniLM:
    its first 2 layers and a fixed random projection to 128 dimensions (cosine roughly kept)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    st = SentenceTransformer(default_model_path(), device="cpu")
    transformer: Any = st[0]
    pooling = st[1]
    transformer.auto_model.encoder.layer = transformer.auto_model.encoder.layer[:2]
    transformer.auto_model.config.num_hidden_layers = 2
    gen = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(384, 128, generator=gen))
    dense = Dense(in_features=384, out_features=128, bias=False, activation_function=torch.nn.Identity())
    with torch.no_grad():
        dense.linear.weight.copy_(q.T)
    SentenceTransformer(modules=[transformer, pooling, dense, Normalize()], device="cpu").save(str(dest))
    return dest


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_small_model(tmp_path_factory.mktemp("models") / "minilm-l2-d128")


@pytest.fixture(params=["embedded", "server"])
def chroma_url(request: pytest.FixtureRequest) -> str:
    if request.param == "server":
        server: ChromaServer = request.getfixturevalue("chroma_server")
        return server.url
    return ""


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", llm_base_url="http://127.0.0.1:9/v1", llm_model="fake",
                    _env_file=None, **kw)  # type: ignore[call-arg]


DOCS = [
    MemoryDoc(id=f"msg:t1:{i}", text=text, user_id="u1", thread_id="t1", kind="turn", turn=(i + 1) // 2, seq=i)
    for i, text in enumerate([
        "I adopted a golden retriever puppy named Biscuit.",
        "Biscuit chewed through my running shoes yesterday.",
        "My sister lives in Montreal and works as a nurse.",
        "I am learning to play the cello on weekends.",
        "The quarterly budget review is due next Friday.",
    ], start=1)
]


# --------------------------------------------------------------------------- names, prefixes, errors


def test_default_is_the_shipped_minilm() -> None:
    emb = load_embeddings()
    assert emb.identity == DEFAULT_IDENTITY and emb.dim == 384 and emb.query_prefix == ""
    assert STEmbeddings(default_model_path()).identity == DEFAULT_IDENTITY  # the same model by its path
    v = emb.embed_query("hello")
    assert len(v) == 384 and abs(sum(x * x for x in v) - 1) < 1e-4


@pytest.mark.parametrize(("name", "prefix"), [
    ("BAAI/bge-small-en-v1.5", BGE_EN),
    ("BAAI/bge-base-en", BGE_EN),
    ("/models/bge-large-zh-v1.5", "为这个句子生成表示以用于检索相关文章："),
    ("BAAI/bge-m3", ""),
    ("sentence-transformers/all-MiniLM-L6-v2", ""),
    ("/home/bgeorge/models/all-minilm", ""),  # only the model's own name counts
])
def test_bge_family_gets_its_query_prefix(name: str, prefix: str) -> None:
    assert default_query_prefix(name) == prefix


def test_query_prefix_applies_and_can_be_overridden(small_model: Path, tmp_path: Path) -> None:
    bge_dir = tmp_path / "bge-small-en-local"
    bge_dir.symlink_to(small_model, target_is_directory=True)
    auto = STEmbeddings(str(bge_dir))
    assert auto.query_prefix == BGE_EN
    assert auto.embed_query("cats") == pytest.approx(auto.embed_documents([BGE_EN + "cats"])[0], abs=1e-5)
    off = STEmbeddings(str(bge_dir), query_prefix="")
    assert off.embed_query("cats") == pytest.approx(off.embed_documents(["cats"])[0], abs=1e-5)
    s = _settings(tmp_path, embedding_model=str(bge_dir), embedding_query_prefix="query: ")
    assert load_embeddings(s.embedding_model, s.embedding_query_prefix).query_prefix == "query: "


def test_hub_id_without_network_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for offline in ("1", "0"):  # offline mode, and "online" with the hub unreachable
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
        t0 = time.monotonic()
        with pytest.raises(EmbedderLoadError) as info:
            STEmbeddings("BAAI/bge-small-en-v1.5")
        assert time.monotonic() - t0 < 15  # no minute of retries
        msg = str(info.value)
        assert "BAAI/bge-small-en-v1.5" in msg and "MEMCHAT_EMBEDDING_MODEL" in msg and "cache" in msg
        assert "Traceback" not in msg


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbedderLoadError, match="does not exist"):
        STEmbeddings(str(tmp_path / "nope"))
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(EmbedderLoadError, match="cannot load embedding model"):
        STEmbeddings(str(broken))
    eng = Engine(_settings(tmp_path, embedding_model=str(tmp_path / "nope")), llm=ScriptedChatModel())
    with pytest.raises(RuntimeError, match="MEMCHAT_EMBEDDING_MODEL"):
        _ = eng.memory


# --------------------------------------------------------------------------- mismatch and reindex


def test_other_embedder_is_refused_then_reindex_fixes_it(chroma_url: str, small_model: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    name = unique_name("reidx")
    old_s = _settings(tmp_path, chroma_url=chroma_url, chroma_collection=name)
    new_s = _settings(tmp_path, chroma_url=chroma_url, chroma_collection=name, embedding_model=str(small_model))
    client = make_chroma_client(chroma_url, old_s.data_dir)
    try:
        Engine(old_s, llm=ScriptedChatModel()).store_docs(DOCS)

        with pytest.raises(EmbedderMismatch) as info:
            _ = Engine(new_s, llm=ScriptedChatModel()).memory
        msg = str(info.value)
        assert DEFAULT_IDENTITY in msg and "minilm-l2-d128" in msg and "memchat reindex" in msg

        assert reindex(new_s, batch=2) == len(DOCS)
        assert "re-embedding with minilm-l2-d128" in capsys.readouterr().err  # the tqdm bar

        names = {c.name if hasattr(c, "name") else str(c) for c in client.list_collections()}
        assert name in names and name + TMP_SUFFIX not in names and name + OLD_SUFFIX not in names
        eng = Engine(new_s, llm=ScriptedChatModel())
        mem = eng.memory
        assert isinstance(mem, ChromaMemory) and mem.count() == len(DOCS)
        assert mem.col.metadata["embedder"] == "minilm-l2-d128" and mem.col.metadata["dim"] == 128
        dense = mem.dense("my dog destroyed my sneakers", "u1", "t1", k=2)
        assert len(mem.embeddings.embed_query("x")) == 128
        assert "msg:t1:2" in {d.id for d, _ in dense}
        items = eng.recall("cello lessons", user_id="u1", thread_id="t1", budget_tokens=400)
        assert any(it["id"] == "msg:t1:4" for it in items)
        assert {d.id: d.text for d in mem.all_docs()} == {d.id: d.text for d in DOCS}
        assert mem.get_ids(["msg:t1:3"])[0].thread_id == "t1"  # metadata carried over

        with pytest.raises(EmbedderMismatch):  # and now the old embedder is the stranger
            _ = Engine(old_s, llm=ScriptedChatModel()).memory
    finally:
        for n in (name, name + TMP_SUFFIX, name + OLD_SUFFIX):
            try:
                client.delete_collection(n)
            except Exception:  # noqa: BLE001 - not there
                pass


def test_reindex_failure_leaves_the_store_as_it_was(small_model: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    old_s = _settings(tmp_path)
    Engine(old_s, llm=ScriptedChatModel()).store_docs(DOCS)
    new_emb = load_embeddings(str(small_model))
    calls = {"n": 0}
    real = new_emb.embed_documents

    def flaky(texts: list[str]) -> list[list[float]]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(texts)

    monkeypatch.setattr(new_emb, "embed_documents", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        reindex(old_s, batch=2, embeddings=new_emb, progress=False)
    client = make_chroma_client("", old_s.data_dir)
    names = {c.name if hasattr(c, "name") else str(c) for c in client.list_collections()}
    assert names == {"memchat", "memchat" + MARKS_SUFFIX}  # no leftover of the interrupted run
    mem = ChromaMemory(client, load_embeddings(), collection="memchat")  # still opens with MiniLM
    assert mem.count() == len(DOCS)


def test_reindex_of_an_empty_store(small_model: Path, tmp_path: Path) -> None:
    s = _settings(tmp_path, embedding_model=str(small_model))
    assert reindex(s, progress=False) == 0
    mem = Engine(s, llm=ScriptedChatModel()).memory
    assert isinstance(mem, ChromaMemory) and mem.count() == 0


def test_reindex_resumes_after_a_stop_between_renames(small_model: Path, tmp_path: Path) -> None:
    old_s = _settings(tmp_path)
    Engine(old_s, llm=ScriptedChatModel()).store_docs(DOCS)
    client = make_chroma_client("", old_s.data_dir)
    client.get_collection("memchat").modify(name="memchat" + OLD_SUFFIX)  # as if stopped mid-swap
    new_s = _settings(tmp_path, embedding_model=str(small_model))
    assert reindex(new_s, progress=False) == len(DOCS)
    mem = Engine(new_s, llm=ScriptedChatModel()).memory
    assert mem.count() == len(DOCS)


def test_memchat_reindex_command(small_model: Path, tmp_path: Path) -> None:
    """``memchat reindex`` driven by MEMCHAT_ env settings alone."""
    import os
    import subprocess
    import sys

    Engine(_settings(tmp_path), llm=ScriptedChatModel()).store_docs(DOCS)
    env = {**os.environ, "MEMCHAT_DATA_DIR": str(tmp_path / "data"), "MEMCHAT_EMBEDDING_MODEL": str(small_model),
           "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-c", "from memchat.cli import main; main()", "reindex", "--batch", "2"]
    out = subprocess.run(cli, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"re-embedded {len(DOCS)} memories" in out.stdout
    assert "re-embedding with minilm-l2-d128" in out.stderr
    mem = Engine(_settings(tmp_path, embedding_model=str(small_model)), llm=ScriptedChatModel()).memory
    assert mem.count() == len(DOCS)


def test_cached_hub_id_loads_without_network(small_model: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id already in the Hugging Face cache loads with no network, quickly, under its hub name."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--memchat-test--tiny-embedder"
    shutil.copytree(small_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    emb = STEmbeddings("memchat-test/tiny-embedder")
    assert time.monotonic() - t0 < 15
    assert emb.identity == "memchat-test/tiny-embedder" and emb.dim == 128
