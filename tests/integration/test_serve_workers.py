"""``memchat serve --workers N``: processes on one port sharing the SQLite checkpoints (``flock`` thread leases)
and the data directory's Chroma store behind a Chroma server that ``serve`` starts; and the configurations it
refuses (a model or a Milvus Lite file, which live in one process)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from memchat.backends.vectorstore import make_chroma_client
from memchat.bench.load import run_load
from memchat.bench.stack import SERVER_PIDS, memchat_server, stub_llm
from memchat.server.app import workers_problem
from memchat.settings import Settings, get_settings

pytestmark = pytest.mark.timeout(300)
KEY = "sk-workers"


def _settings(**kw: str) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def test_workers_need_stores_and_a_model_outside_the_process() -> None:
    remote = {"llm_base_url": "http://127.0.0.1:30000/v1"}
    assert workers_problem(_settings(), 1) is None
    assert "MEMCHAT_LLM_BASE_URL" in str(workers_problem(_settings(chroma_url="http://c:8000"), 2))
    assert workers_problem(_settings(**remote), 2) is None  # the embedded Chroma store goes behind a server
    assert "MEMCHAT_MILVUS_URI" in str(workers_problem(_settings(**remote, vector_store="milvus"), 2))
    assert "MEMCHAT_MILVUS_URI" in str(workers_problem(_settings(**remote, vector_store="milvus",
                                                                 milvus_uri="/tmp/m.db"), 2))
    assert workers_problem(_settings(**remote, chroma_url="http://c:8000"), 4) is None
    assert workers_problem(_settings(**remote, vector_store="milvus", milvus_uri="http://m:19530"), 2) is None


def test_serve_refuses_workers_on_a_milvus_lite_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from memchat.cli import app

    monkeypatch.setenv("MEMCHAT_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("MEMCHAT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEMCHAT_VECTOR_STORE", "milvus")
    monkeypatch.delenv("MEMCHAT_MILVUS_URI", raising=False)
    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(app, ["serve", "--workers", "2"])
    finally:
        get_settings.cache_clear()
    assert res.exit_code == 1
    assert "MEMCHAT_MILVUS_URI" in res.output
    assert not list(tmp_path.iterdir())  # refused before anything was opened


def _workers(base: str) -> list[psutil.Process]:
    sup = psutil.Process(SERVER_PIDS[base])
    return [p for p in sup.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def test_two_workers_share_the_threads_and_both_serve(tmp_path: Path) -> None:
    """The default embedded store: ``serve`` puts ``<data_dir>/chroma`` behind a Chroma server for its workers."""
    with stub_llm() as llm, memchat_server(llm, tmp_path, KEY, {"l0_turns": 20}, workers=2) as base:
        workers = _workers(base)
        assert len(workers) == 2
        before = [_cpu(p) for p in workers]
        res = run_load(base, KEY, threads=8, turns=4, users=4, strict=True, run="wk")
        assert res["problems"] == [] and res["errors"] == 0
        assert res["turns_ok"] == 32 and res["lost_turns"] == 0 and res["crosstalk"] == 0
        used = [_cpu(p) - b for p, b in zip(workers, before, strict=True)]
        assert min(used) > 0.2, f"one worker served nothing: CPU seconds {used}"

        # one thread, six requests at once on separate connections (so both workers take some): no turn lost
        def post(i: int) -> int:
            with httpx.Client(timeout=120) as client:
                return client.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}",
                                                                           "X-Thread-ID": "shared"},
                                   json={"model": "memchat", "user": "u-shared",
                                         "messages": [{"role": "user", "content": f"Message {i} of six."}]}
                                   ).status_code

        with ThreadPoolExecutor(6) as pool:
            assert sorted(pool.map(post, range(6))) == [200] * 6
        mem = httpx.get(f"{base}/v1/threads/shared/memory", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert mem["turns"] == 6
        assert sorted(t["user"] for t in mem["recent_turns"]) == [f"Message {i} of six." for i in range(6)]
        assert mem["memories"]["thread"] == 12
    # the vectors are in the data directory's own store: the embedded client opens them after the server
    col = make_chroma_client("", tmp_path).get_collection("memchat")
    assert len(col.get(where={"thread_id": "shared"}, include=[])["ids"]) == 12
    assert col.count() >= 32 * 2 + 12  # and the load's turns (with its warm-up)
