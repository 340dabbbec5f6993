"""Shared fixtures: isolated settings, a scripted LLM, a MemChat over temp storage."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
# the tests' remote stub URLs would turn the LLM extraction tier on ("auto"); tests that count or script LLM
# calls keep their order: the tier runs only where a test asks for it (tests/graph/test_llm_extraction.py)
os.environ.setdefault("MEMCHAT_LLM_EXTRACTION", "false")

from memchat.backends.engine import Engine  # noqa: E402
from memchat.settings import Settings  # noqa: E402
from tests.support.fakes import ScriptedChatModel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    """One SGLang-protocol stub LLM server per test module (modules needing a key define their own)."""
    from tests.support.sglang_stub import run_stub

    with run_stub() as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings isolated in a temp data dir, pointing at no real LLM."""
    return Settings(data_dir=tmp_path / "data", llm_base_url="http://127.0.0.1:9/v1", llm_model="fake",
                    llm_extraction="false", _env_file=None)  # type: ignore[call-arg]


@pytest.fixture(params=["chroma", "milvus"])
def vector_store(request: pytest.FixtureRequest) -> str:
    """Each vector store kind: embedded Chroma, and Milvus Lite (the same contract, the same assertions)."""
    return str(request.param)


@pytest.fixture
def store_settings(settings: Settings, vector_store: str) -> Settings:
    """``settings`` on the ``vector_store`` kind (Milvus Lite file in the temp data dir); ``milvus-server``
    searches in Milvus (dense + BM25 function) instead of in process, as memchat does on a Milvus server."""
    kind, _, search = vector_store.partition("-")
    return settings.model_copy(update={"vector_store": kind, **({"milvus_search": search} if search else {})})


@pytest.fixture
def store_engine(store_settings: Settings, fake_llm: ScriptedChatModel) -> Engine:
    """``engine`` on each vector store kind."""
    return Engine(store_settings, llm=fake_llm)


@pytest.fixture
def fake_llm() -> ScriptedChatModel:
    """A scripted chat model."""
    return ScriptedChatModel()


@pytest.fixture
def engine(settings: Settings, fake_llm: ScriptedChatModel) -> Engine:
    """An engine with the scripted LLM and the real tokenizer, embedder and Chroma (temp dir)."""
    return Engine(settings, llm=fake_llm)


@pytest.fixture
def memchat(engine: Engine) -> Iterator[object]:
    """A MemChat (SQLite checkpoints and store) over the scripted LLM."""
    from memchat.chat import MemChat

    yield MemChat(engine=engine)


@pytest.fixture
def store_memchat(store_engine: Engine) -> Iterator[object]:
    """``memchat`` on each vector store kind."""
    from memchat.chat import MemChat

    yield MemChat(engine=store_engine)
