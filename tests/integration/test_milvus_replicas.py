"""Two ``memchat serve`` replicas over one PostgreSQL and one Milvus server continue one thread alternately.

A Milvus Lite *file* belongs to one process, so the replicas reach Milvus over the network, as a real
deployment does: here the server is ``milvus-lite server`` (Milvus' gRPC protocol on a port, the Lite
engine behind it), since no Milvus standalone can run on the CI machine (no container runtime). What it
proves: memchat keeps no vector state of its own on the Milvus path (BM25 and filtering run in Milvus),
so turns written by either replica are recalled by the other, and retried or alternating turns neither
lose nor duplicate a memory. What it does not: Milvus standalone/cluster behaviour under load.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_replicas import API_KEY, LLM_KEY, Replica, _chat, memchat_command
from tests.support.services import (
    PostgresServer,
    _die_with_parent,
    free_port,
    stop_process,
    unique_name,
    wait_until,
)
from tests.support.sglang_stub import StubURL, run_stub

pytest_plugins = ["tests.support.services"]  # postgres_server
pytestmark = pytest.mark.timeout(300)

THREAD = "milvus-thread"
USER = "u-replicas"  # the user of tests.integration.test_replicas._chat
TURNS = 8


@pytest.fixture(scope="module")
def stub() -> Iterator[StubURL]:
    with run_stub(api_key=LLM_KEY) as url:
        yield url


@pytest.fixture(scope="module")
def milvus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``milvus-lite server`` process on a free port."""
    from pymilvus import MilvusClient

    tmp = tmp_path_factory.mktemp("milvus")
    port = free_port()
    log = tmp / "milvus.log"
    exe = Path(os.path.dirname(os.path.realpath(memchat_command()[0]))) / "milvus-lite"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([str(exe), "server", "--data-dir", str(tmp / "data"), "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        client = MilvusClient(uri=url, timeout=2)
        try:
            client.list_collections()
        finally:  # an idle channel left open is closed by the server (GOAWAY too_many_pings) and poisons the
            client.close()  # next MilvusClient of this process, which would reuse it
        return True

    try:
        wait_until(ready, proc, log, 60, f"milvus-lite server on {url}")
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer, milvus_url: str,
             stub: StubURL) -> Iterator[tuple[list[Replica], str]]:
    tmp_path = tmp_path_factory.mktemp("replicas")
    pg_url = postgres_server.new_database("mreplicas")
    collection = unique_name("replicas")
    started: list[Replica] = []
    try:
        for i in range(2):
            port = free_port()
            data_dir = tmp_path / f"replica{i}"
            data_dir.mkdir()
            env = {k: v for k, v in os.environ.items() if not k.startswith("MEMCHAT_")}
            env.update({"MEMCHAT_CHECKPOINT_URL": pg_url, "MEMCHAT_VECTOR_STORE": "milvus",
                        "MEMCHAT_MILVUS_URI": milvus_url, "MEMCHAT_MILVUS_COLLECTION": collection,
                        "MEMCHAT_LLM_BASE_URL": str(stub), "MEMCHAT_LLM_API_KEY": LLM_KEY, "MEMCHAT_API_KEY": API_KEY,
                        "MEMCHAT_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
            log = tmp_path / f"replica{i}.log"
            with open(log, "wb") as logf:
                proc = subprocess.Popen([*memchat_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                        cwd=data_dir, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
            started.append(Replica(f"http://127.0.0.1:{port}", proc, log, data_dir))
        for r in started:
            def ready(r: Replica = r) -> bool:
                res = httpx.get(f"{r.url}/health", timeout=5)
                return res.status_code == 200 and res.json().get("status") == "ok"

            wait_until(ready, r.proc, r.log, 150, f"memchat serve on {r.url}")
        yield started, collection
    finally:
        for r in started:
            stop_process(r.proc)
        postgres_server.drop_database(pg_url)


def test_one_thread_alternating_on_two_replicas_over_milvus(replicas: tuple[list[Replica], str], milvus_url: str,
                                                              stub: StubURL) -> None:
    from pymilvus import MilvusClient

    reps, collection = replicas
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(timeout=60) as client:
        for turn in range(1, TURNS + 1):
            text = ("My name is Frida and my bike is a green Bianchi." if turn == 1
                    else f"Turn {turn}: the ferry to island {turn} leaves at {turn} pm.")
            assert _chat(client, reps[(turn - 1) % 2], text, turn % 3 == 0, THREAD).strip()
        _chat(client, reps[0], "What colour is my bike?", False, THREAD)
        mem = client.get(f"{reps[1].url}/v1/threads/{THREAD}/memory", headers=headers).json()
    assert mem["turns"] == TURNS + 1
    assert "Bianchi" in (stub.state.last_prompt or "")
    m = MilvusClient(uri=milvus_url)
    rows = m.query(collection, filter=f'thread_id == "{THREAD}" and kind == "turn"', output_fields=["id", "seq"],
                   limit=1000)
    seqs = sorted(int(r["seq"]) for r in rows)
    assert seqs == list(range(1, 2 * (TURNS + 1) + 1))  # every message and reply once: none lost, none twice
    assert len({r["id"] for r in rows}) == len(rows)
    for r in reps:  # nothing was kept locally
        assert not any(r.data_dir.glob("milvus*")) and not (r.data_dir / "chroma").exists()
