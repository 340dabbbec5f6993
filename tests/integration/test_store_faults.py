"""Store faults over real PostgreSQL and a real Chroma server (each behind a proxy the test can cut):
``/ready`` tells the truth, an unreachable checkpoint database is a quick 503 ``checkpoint_unavailable``, an
unreachable vector store still answers (memories wait in the outbox); thread leases are fair across replicas
and a dead replica's queued request or lease stops blocking within the lease TTL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from memchat.backends.persistence import ThreadLeases
from memchat.bench.netcut import TcpProxy
from memchat.settings import Settings
from tests.support.services import ChromaServer, unique_name
from tests.support.serving import StubURL, serve_memchat

pytest_plugins = ["tests.support.services"]  # pg_url, chroma_server
STORE_TIMEOUT = 2.0


def via(url: str, proxy: TcpProxy) -> str:
    u = urlparse(url)
    return u._replace(netloc=u.netloc.replace(f":{u.port}", f":{proxy.port}")).geturl()


@pytest.fixture
def proxies(pg_url: str, chroma_server: ChromaServer) -> Iterator[tuple[TcpProxy, TcpProxy]]:
    pg = TcpProxy("127.0.0.1", int(urlparse(pg_url).port or 5432))
    chroma = TcpProxy("127.0.0.1", chroma_server.port)
    yield pg, chroma
    pg.close()
    chroma.close()


def chat(base: str, tid: str, text: str) -> httpx.Response:
    body = {"model": "memchat", "user": "u1", "messages": [{"role": "user", "content": text}]}
    return httpx.post(f"{base}/v1/chat/completions", json=body, headers={"X-Thread-ID": tid}, timeout=60)


def wait_ready(base: str, up: bool, limit: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + limit
    while True:
        r = httpx.get(f"{base}/ready", timeout=10)
        if (r.status_code == 200) == up or time.monotonic() > deadline:
            return dict(r.json(), code=r.status_code)
        time.sleep(0.2)


def test_store_outages_answer_clear_503s_and_ready_tells_the_truth(
        stub: StubURL, tmp_path: Path, pg_url: str, chroma_server: ChromaServer,
        proxies: tuple[TcpProxy, TcpProxy]) -> None:
    pg, chroma = proxies
    with serve_memchat(stub, tmp_path, checkpoint_url=via(pg_url, pg), chroma_url=via(chroma_server.url, chroma),
                       chroma_collection=unique_name(), store_timeout=STORE_TIMEOUT, turn_timeout=30,
                       background_summaries=False) as base:
        assert chat(base, "t1", "My name is Ada.").status_code == 200
        assert wait_ready(base, True)["code"] == 200

        pg.down()  # PostgreSQL gone: readiness says so, chat is a quick, clear 503
        t0 = time.monotonic()
        ready = wait_ready(base, False, limit=0)
        assert ready["code"] == 503 and not ready["stores"]["checkpoints"]["ok"]  # type: ignore[index]
        r = chat(base, "t1", "I live in Lyon.")
        took = time.monotonic() - t0
        assert r.status_code == 503 and r.json()["error"]["code"] == "checkpoint_unavailable", r.text
        assert took < 3 * STORE_TIMEOUT + 2, took
        pg.up()
        assert wait_ready(base, True)["code"] == 200
        r = chat(base, "t1", "I live in Lyon.")
        assert r.status_code == 200 and r.json()["memchat"]["turn"] == 2, r.text

        chroma.down()  # vector store gone: turns are still answered, their memories wait in the outbox
        ready = wait_ready(base, False, limit=0)
        assert ready["code"] == 503 and not ready["stores"]["vector_store"]["ok"]  # type: ignore[index]
        r = chat(base, "t1", "I work as a baker.")
        assert r.status_code == 200 and r.json()["memchat"]["turn"] == 3, r.text
        assert httpx.get(f"{base}/health", timeout=10).json()["outbox_depth"] >= 2
        r = httpx.delete(f"{base}/v1/threads/t-other", timeout=30)  # needs the vector store itself
        assert r.status_code == 503 and r.json()["error"]["code"] == "vector_store_unavailable", r.text
        chroma.up()
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/health", timeout=10).json()["outbox_depth"] and time.monotonic() < deadline:
            time.sleep(0.3)
        mem = httpx.get(f"{base}/v1/threads/t1/memory", timeout=30).json()
        assert mem["memories"]["thread"] == 6  # all six messages, none twice


def _leases(tmp_path: Path, pg_url: str, **kw: float) -> ThreadLeases:
    s = Settings(checkpoint_url=pg_url, data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    return ThreadLeases(s, **kw)


def test_a_waiter_on_another_replica_is_served_in_arrival_order(tmp_path: Path, pg_url: str) -> None:
    busy, other = _leases(tmp_path, pg_url, wait=30), _leases(tmp_path, pg_url, wait=30)
    stop = threading.Event()

    def client() -> None:  # three clients of one replica keep the thread busy back to back
        while not stop.is_set():
            with busy.hold("hot"):
                time.sleep(0.1)

    clients = [threading.Thread(target=client) for _ in range(3)]
    try:
        for c in clients:
            c.start()
        time.sleep(0.5)
        waits = []
        for _ in range(3):
            t0 = time.monotonic()
            with other.hold("hot"):
                waits.append(time.monotonic() - t0)
        assert max(waits) < 1.5, waits  # behind at most the turns queued before it, not starved
    finally:
        stop.set()
        for c in clients:
            c.join(10)
        busy.close()
        other.close()


def test_a_dead_replicas_queued_request_and_lease_stop_blocking_within_the_ttl(tmp_path: Path, pg_url: str) -> None:
    assert _leases(tmp_path, pg_url).ttl <= 6  # MEMCHAT_LEASE_TTL: reclaimed in seconds by default
    dead, alive = _leases(tmp_path, pg_url, ttl=1.0), _leases(tmp_path, pg_url, ttl=1.0, wait=10)
    try:
        assert dead._try("orphan", "crashed-holder")  # a lease the dead replica never renews nor releases
        dead._queue("orphan", "crashed-waiter")  # and a request it had queued (no more heartbeats)
        t0 = time.monotonic()
        with alive.hold("orphan"):
            waited = time.monotonic() - t0
        assert waited < 3, waited
    finally:
        dead.close()
        alive.close()
