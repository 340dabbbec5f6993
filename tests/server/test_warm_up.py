"""A server process loads its memory backends before it takes requests (its first turns used to wait seconds
for the embedder: the 10–15 s latency tail of ``memchat bench load --workers 2``), and a store that is down
then does not keep it from starting."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from memchat.chat import MemChat
from memchat.server.app import create_app
from memchat.settings import Settings


def _memchat(tmp_path: Path) -> MemChat:
    s = Settings(_env_file=None, data_dir=tmp_path, llm_base_url="http://127.0.0.1:9/v1",  # type: ignore[call-arg]
                 llm_model="stub")
    return MemChat(s)


def test_the_vector_store_and_embedder_are_loaded_at_startup(tmp_path: Path) -> None:
    mc = _memchat(tmp_path)
    app = create_app(mc.settings, mc)
    assert mc.engine._memory is None
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert mc.engine._memory is not None  # loaded before the first request
        assert client.get("/health").status_code in (200, 503)  # the LLM is down: degraded, but serving


def test_a_failing_warm_up_does_not_stop_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    mc = _memchat(tmp_path)

    def down() -> None:
        raise ConnectionError("vector store unreachable")

    monkeypatch.setattr(mc.engine, "warm_up", down)
    with TestClient(create_app(mc.settings, mc), base_url="http://127.0.0.1") as client:
        assert client.get("/health").status_code in (200, 503)
    assert "not warmed up" in caplog.text and "vector store unreachable" in caplog.text
