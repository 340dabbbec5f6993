"""Backend faults through the API: the LLM server stopped (503) or hanging past MEMCHAT_LLM_TIMEOUT (504)
answer within the timeout, leave the thread and its vector memories exactly as they were, and the same
request succeeds once the backend is back; summary, extraction and retrieval failures leave the turn
answered and are counted in /metrics.

(tests/server/test_server_api.py covers the stub's error mode and the first-turn timeout.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from memchat.backends.engine import Engine
from memchat.backends.extraction import cache_for as extraction_cache
from memchat.chat import MemChat
from memchat.server.app import create_app
from memchat.server.metrics import samples
from memchat.settings import Settings
from tests.support.fakes import ScriptedChatModel
from tests.support.serving import STUB_MODEL, free_port, serve_app
from tests.support.sglang_stub import ServerThread
from tests.support.sglang_stub import create_app as stub_app

KEY = "sk-faults"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMEOUT = 2.0
MARGIN = 1.5  # seconds allowed beyond MEMCHAT_LLM_TIMEOUT for the answer


class Stub:
    """The stub LLM on a fixed port, so that it can be stopped and started again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.root}/v1"
        self.server: ServerThread | None = None
        self.start()

    def start(self) -> None:
        self.server = ServerThread(stub_app(), "127.0.0.1", self.port).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def control(self, **kw: Any) -> None:
        httpx.post(f"{self.root}/_control", json=kw).raise_for_status()


@pytest.fixture(scope="module")
def stub() -> Iterator[Stub]:
    s = Stub()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def mc(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> MemChat:
    settings = Settings(llm_base_url=stub.url, llm_model=STUB_MODEL, data_dir=tmp_path_factory.mktemp("faults"),
                        api_key=KEY, llm_timeout=TIMEOUT, llm_max_retries=0, _env_file=None)  # type: ignore[call-arg]
    return MemChat(settings)


@pytest.fixture(scope="module")
def base(mc: MemChat) -> Iterator[str]:
    with serve_app(create_app(mc.settings, mc)) as url:
        yield url


@pytest.fixture(autouse=True)
def _stub_ok(stub: Stub) -> None:
    if stub.server is None:
        stub.start()
    stub.control(mode="ok", delay=0, reset=True)


def chat(base: str, tid: str | None, text: str, stream: bool = False) -> tuple[httpx.Response, float]:
    headers = {**AUTH, **({"X-Thread-ID": tid, "X-User-ID": f"user-{tid}"} if tid else {})}
    body = {"model": "memchat", "stream": stream, "messages": [{"role": "user", "content": text}]}
    t0 = time.perf_counter()
    r = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=60)
    return r, time.perf_counter() - t0


def snapshot(base: str, mc: MemChat, tid: str) -> dict[str, Any]:
    """What the thread holds: turns, verbatim turns, slots, vector memories (API and store)."""
    mem = httpx.get(f"{base}/v1/threads/{tid}/memory", headers=AUTH, timeout=30).json()
    return {"turns": mem["turns"], "recent": mem["recent_turns"], "slots": mem["slots"], "l1": mem["l1"],
            "memories": mem["memories"], "store": mc.engine.memory.count()}


def metrics(base: str) -> dict[str, float]:
    return samples(httpx.get(f"{base}/metrics", headers=AUTH).text)


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


TURN_FAILED = 'memchat_turns_total{{mode="{mode}",outcome="{outcome}"}}'


def test_stopped_backend_is_503_at_once_and_the_thread_is_unchanged(base: str, mc: MemChat, stub: Stub) -> None:
    tid = "down"
    r, _ = chat(base, tid, "My name is Li Ming.")
    assert r.status_code == 200
    before = snapshot(base, mc, tid)
    assert before["turns"] == 1 and before["memories"] == {"thread": 2, "user": 1}
    m0 = metrics(base)
    stub.stop()
    for stream in (False, True):
        r, elapsed = chat(base, tid, "My order number is 55-771.", stream=stream)
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "backend_unavailable" and err["type"] == "server_error"
        assert "LLM backend failed" in err["message"] and "nothing was saved; the thread is unchanged" in err["message"]
        assert elapsed < TIMEOUT + MARGIN
    r = httpx.post(f"{base}/graph/invoke", json={"input": {"messages": [["user", "My order number is 55-771."]]}},
                   headers={**AUTH, "X-Thread-ID": tid}, timeout=60)
    assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable"
    r, _ = chat(base, None, "no thread")  # stateless
    assert r.status_code == 503 and "thread" not in r.json()["error"]["message"]
    assert snapshot(base, mc, tid) == before  # no half turn: checkpoint, slots and vector memory as they were
    m1 = metrics(base)
    assert delta(m1, m0, TURN_FAILED.format(mode="thread", outcome="backend_unavailable")) == 2
    assert delta(m1, m0, TURN_FAILED.format(mode="graph", outcome="backend_unavailable")) == 1
    assert delta(m1, m0, TURN_FAILED.format(mode="stateless", outcome="backend_unavailable")) == 1
    assert delta(m1, m0, "memchat_llm_failures_total") == 4

    stub.start()  # back: the same request goes through, once
    r, _ = chat(base, tid, "My order number is 55-771.")
    assert r.status_code == 200 and r.json()["memchat"]["turn"] == 2
    after = snapshot(base, mc, tid)
    assert after["turns"] == 2 and after["recent"][:1] == before["recent"]
    assert after["memories"] == {"thread": 4, "user": 2} and after["store"] == before["store"] + 3
    assert {s["key"]: s["value"] for s in after["slots"]}["fact:order_number"] == "55-771"


def test_hanging_backend_is_504_within_the_timeout(base: str, mc: MemChat, stub: Stub) -> None:
    tid = "hang"
    r, _ = chat(base, tid, "Hello there, this is the first turn.")
    assert r.status_code == 200
    before = snapshot(base, mc, tid)
    m0 = metrics(base)
    stub.control(mode="hang")
    try:
        for stream in (False, True):
            r, elapsed = chat(base, tid, "My email is li@example.com and I live in Oslo.", stream=stream)
            assert r.status_code == 504, r.text
            err = r.json()["error"]
            assert err["code"] == "backend_timeout" and "timed out" in err["message"]
            assert "nothing was saved; the thread is unchanged" in err["message"]
            assert TIMEOUT - 0.2 <= elapsed < TIMEOUT + MARGIN, elapsed
    finally:
        stub.control(mode="ok")
    assert snapshot(base, mc, tid) == before
    assert delta(metrics(base), m0, TURN_FAILED.format(mode="thread", outcome="backend_timeout")) == 2

    r, _ = chat(base, tid, "My email is li@example.com and I live in Oslo.")
    assert r.status_code == 200 and r.json()["memchat"]["turn"] == 2
    after = snapshot(base, mc, tid)
    assert after["turns"] == 2 and after["memories"]["thread"] == before["memories"]["thread"] + 2
    assert after["store"] == before["store"] + 3  # message, reply, one fact: nothing from the timed-out tries
    slots = {s["key"]: s["value"] for s in after["slots"]}
    assert slots["fact:email"] == "li@example.com" and slots["fact:location"] == "Oslo"


def test_invalid_summary_json_leaves_the_turn_answered_and_is_counted(stub: Stub, tmp_path: Path) -> None:
    settings = Settings(llm_base_url=stub.url, llm_model=STUB_MODEL, data_dir=tmp_path, api_key=KEY, l0_turns=1,
                        llm_extraction=True, llm_max_retries=0, background_summaries=False,  # inline: scripted order
                        _env_file=None)  # type: ignore[call-arg]
    mc = MemChat(settings)
    with serve_app(create_app(settings, mc)) as url:
        for text in ("I am planning a trip to Kyoto.", "We will travel in April."):
            assert chat(url, "summ", text)[0].status_code == 200
        extraction_cache(mc.engine).drain()  # the slot extraction after the reply must not take the script
        m0 = metrics(url)
        stub.control(replies=["this is {not json"])  # the next LLM call: the L1 summary of this turn
        r, _ = chat(url, "summ", "What should we pack?")
        reply = r.json()["choices"][0]["message"]["content"]
        assert r.status_code == 200 and reply.startswith("Stub reply #") and "not json" not in reply
        m1 = metrics(url)
        assert delta(m1, m0, 'memchat_llm_calls_total{kind="summary"}') == 1
        assert delta(m1, m0, 'memchat_llm_calls_total{kind="respond"}') == 1
        assert delta(m1, m0, "memchat_summary_failures_total") == 1
        assert delta(m1, m0, "memchat_extraction_failures_total") == 1
        mem = httpx.get(f"{url}/v1/threads/summ/memory", headers=AUTH).json()
        assert mem["turns"] == 3 and mem["l1"][-1]["llm"] is False  # the extractive fallback
        assert "Kyoto" in mem["l1"][-1]["text"] and mem["counters"]["summary_failures"] == 1


def test_summary_timeouts_and_retrieval_failures_are_counted(tmp_path: Path) -> None:
    settings = Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="fake", data_dir=tmp_path, api_key=KEY,
                        l0_turns=1, llm_extraction=True, background_summaries=False,  # counted within the turns
                        _env_file=None)  # type: ignore[call-arg]
    fake = ScriptedChatModel(fail_kinds={"summary"})  # summary calls raise TimeoutError
    store = Engine(settings).memory

    class BrokenSearch:
        """The real store, but searching fails."""

        def search(self, *a: Any, **kw: Any) -> Any:
            raise ConnectionError("vector store unreachable")

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

    mc = MemChat(engine=Engine(settings, llm=fake, memory=BrokenSearch()))  # type: ignore[arg-type]
    with serve_app(create_app(settings, mc, probe=False)) as url:
        m0 = metrics(url)
        for i, text in enumerate(("I am writing a report on tides.", "It is due on Friday.", "Any tips?"), 1):
            r, _ = chat(url, "tides", text)
            assert r.status_code == 200 and r.json()["memchat"]["turn"] == i
        m1 = metrics(url)
        assert delta(m1, m0, "memchat_retrieval_failures_total") == 3
        assert delta(m1, m0, "memchat_summary_failures_total") == 1
        assert delta(m1, m0, "memchat_extraction_failures_total") == 1
        assert delta(m1, m0, TURN_FAILED.format(mode="thread", outcome="ok")) == 3
        mem = httpx.get(f"{url}/v1/threads/tides/memory", headers=AUTH).json()
        assert mem["turns"] == 3 and mem["counters"]["retrieval_failures"] == 3
        assert mem["memories"]["thread"] == 6  # the turns were stored even though search failed
        # an on-demand L2 that fails: 503, and the thread keeps what it had
        r = httpx.post(f"{url}/v1/threads/tides/summarize", headers=AUTH, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "summary_failed"
        again = httpx.get(f"{url}/v1/threads/tides/memory", headers=AUTH).json()
        assert again["l1"] == mem["l1"] and again["l2"] == mem["l2"] and again["turns"] == 3
        assert delta(metrics(url), m1, "memchat_summary_failures_total") == 1


def test_error_mapping() -> None:
    from memchat.backends.llm import BackendError, BackendTimeout
    from memchat.backends.persistence import ThreadBusy
    from memchat.server.app import _api_error

    busy = _api_error(ThreadBusy("thread 't' is busy with another turn in another process"), "t")
    assert busy.status == 409 and busy.code == "thread_busy" and "try again" in busy.message
    assert _api_error(BackendTimeout("LLM backend timed out"), "t").status == 504
    assert _api_error(BackendError("LLM backend failed"), None).status == 503
    internal = _api_error(KeyError("x"), "t")
    assert internal.status == 500 and internal.code == "internal_error"
