"""Turn integrity through the API (issue 17, items 5-7).

* A turn that fails after the reply (audit or profile store write, checkpoint write, thread registry) leaves
  no vector memory behind: nothing of it is recalled later. A vector write that fails after the checkpoint
  keeps the turn and is written before the thread's next turn.
* ``Idempotency-Key``: a retried request (the client timed out, the turn committed) gets the stored result
  (same reply, same completion id) instead of a second turn, also while the first is still running, after a
  restart and on ``/graph/invoke``; the same key with another body is a 422; only the last N keys are kept.
* One busy thread cannot starve the server: requests beyond ``MEMCHAT_THREAD_QUEUE`` get 409 ``thread_busy``
  at once, waiters get it after ``MEMCHAT_THREAD_WAIT``, and the rest of the server stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from memchat.backends.vectorstore import msg_id
from memchat.chat import THREADS_NS, MemChat
from memchat.server.app import create_app
from memchat.server.metrics import samples
from memchat.settings import Settings
from tests.support.serving import STUB_MODEL, StubURL, serve_app, serve_memchat


@pytest.fixture(scope="module")
def mc(stub: StubURL, tmp_path_factory: pytest.TempPathFactory) -> MemChat:
    settings = Settings(llm_base_url=stub, llm_model=STUB_MODEL, data_dir=tmp_path_factory.mktemp("turns"),
                        llm_max_retries=0, _env_file=None)  # type: ignore[call-arg]
    return MemChat(settings)


@pytest.fixture(scope="module")
def base(mc: MemChat) -> Iterator[str]:
    with serve_app(create_app(mc.settings, mc)) as url:
        yield url


@pytest.fixture(autouse=True)
def _stub_ok(stub: StubURL) -> Iterator[None]:
    httpx.post(f"{stub.root}/_control", json={"mode": "ok", "delay": 0, "reset": True})
    yield
    stub.state.delay = 0.0


def chat(base: str, tid: str, text: str, user: str = "u1", key: str | None = None, stream: bool = False,
         timeout: float = 60) -> httpx.Response:
    headers = {"X-Thread-ID": tid, **({"Idempotency-Key": key} if key else {})}
    body = {"model": "memchat", "user": user, "stream": stream, "messages": [{"role": "user", "content": text}]}
    return httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=timeout)


def turns(base: str, tid: str) -> int:
    return int(httpx.get(f"{base}/v1/threads/{tid}/memory", timeout=30).json()["turns"])


def failures(base: str) -> float:
    return samples(httpx.get(f"{base}/metrics").text).get("memchat_memory_write_failures_total", 0.0)


def user_texts(mc: MemChat, user: str) -> str:
    """Every vector memory of a user (thread- and user-scoped), as one string."""
    got = mc.engine.memory.col.get(where={"user_id": user}, include=["documents"])  # type: ignore[attr-defined]
    return "\n".join(got["documents"] or [])


@contextlib.contextmanager
def fail_once(obj: Any, name: str, when: Callable[..., bool] = lambda *a, **k: True) -> Iterator[list[int]]:
    """Make ``obj.name`` raise ``OSError`` on its first call that matches ``when``; yields [failures]."""
    real = getattr(obj, name)
    hits = [0]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if not hits[0] and when(*args, **kwargs):
            hits[0] += 1
            raise OSError(f"injected failure of {name}")
        return real(*args, **kwargs)

    setattr(obj, name, flaky)
    try:
        yield hits
    finally:
        delattr(obj, name)  # the instance attribute goes, the class method shows again


def _ns_has(label: str) -> Callable[..., bool]:
    return lambda ns, *a, **k: label in ns


STEPS: dict[str, Callable[[MemChat], Any]] = {
    "audit": lambda m: fail_once(m.store, "put", _ns_has("audit")),
    "profile": lambda m: fail_once(m.store, "put", _ns_has("profile")),
    "checkpoint": lambda m: fail_once(m.checkpointer, "put"),
    "registry": lambda m: fail_once(m.store, "put", lambda ns, *a, **k: tuple(ns) == THREADS_NS),
}


# ---- item 5: a failed turn leaves no vector memory -------------------------------------------------
@pytest.mark.parametrize("step", list(STEPS))
def test_a_turn_failing_after_the_reply_leaves_no_vector_memory(base: str, mc: MemChat, step: str) -> None:
    tid, user = f"fail-{step}", f"user-fail-{step}"
    assert chat(base, tid, "Hello, I am planning a trip to Lisbon.", user).status_code == 200
    before = user_texts(mc, user)
    with STEPS[step](mc) as hits:
        r = chat(base, tid, f"My name is Quorvath. I keep a pet axolotl named Zibble{step}.", user)
    assert hits[0] == 1 and r.status_code == 500, r.text
    assert turns(base, tid) == 1
    assert mc.engine.memory.get_ids([msg_id(tid, 3), msg_id(tid, 4)]) == []
    assert user_texts(mc, user) == before and "Zibble" not in before
    # the next turn recalls nothing of the failed one
    r = chat(base, tid, "What is the name of my pet axolotl?", user)
    assert r.status_code == 200 and turns(base, tid) == 2
    ctx = httpx.get(f"{base}/v1/threads/{tid}/context", timeout=30).json()
    assert "Zibble" not in json.dumps(ctx["messages"]) and "Zibble" not in user_texts(mc, user)


def test_a_failed_vector_write_keeps_the_turn_and_is_written_before_the_next(base: str, mc: MemChat) -> None:
    tid, user = "late-vectors", "user-late"
    before = failures(base)
    with fail_once(mc.engine.memory, "add") as hits:
        r = chat(base, tid, "I keep a pet axolotl named Zibble.", user)
    assert hits[0] == 1 and r.status_code == 200 and turns(base, tid) == 1
    assert failures(base) == before + 1
    assert mc.engine.memory.get_ids([msg_id(tid, 1)]) == []
    assert chat(base, tid, "Tell me something nice.", user).status_code == 200
    assert [d.text for d in mc.engine.memory.get_ids([msg_id(tid, 1)])] == ["I keep a pet axolotl named Zibble."]


# ---- item 6: idempotency keys ----------------------------------------------------------------------
def test_a_retry_with_the_same_key_replays_the_stored_result(base: str, stub: StubURL) -> None:
    tid = "idem"
    first = chat(base, tid, "Book a table for two.", key="k-1")
    assert first.status_code == 200
    calls = httpx.get(f"{stub.root}/_stats").json()["requests"]
    again = chat(base, tid, "Book a table for two.", key="k-1")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.json()["choices"] == first.json()["choices"] and again.json()["created"] == first.json()["created"]
    streamed = chat(base, tid, "Book a table for two.", key="k-1", stream=True)
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert {c["id"] for c in chunks} == {first.json()["id"]}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == \
        first.json()["choices"][0]["message"]["content"]
    assert httpx.get(f"{stub.root}/_stats").json()["requests"] == calls and turns(base, tid) == 1
    # the same key for another request: 422, nothing runs; another key: a new turn
    for text, user in (("Book a table for three.", "u1"), ("Book a table for two.", "someone-else")):
        r = chat(base, tid, text, user=user, key="k-1")
        assert r.status_code == 422 and r.json()["error"]["code"] == "idempotency_key_reused"
    assert chat(base, tid, "Book a table for two.", key="k-2").json()["id"] != first.json()["id"]
    assert turns(base, tid) == 2
    assert chat(base, tid, "hi", key="x" * 300).status_code == 400


def test_a_client_timeout_then_a_retry_commits_one_turn(base: str, stub: StubURL) -> None:
    tid = "idem-timeout"
    stub.state.delay = 1.5
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=0.5)
    args: dict[str, Any] = {"model": "memchat", "messages": [{"role": "user", "content": "Order a pizza."}],
                            "extra_headers": {"X-Thread-ID": tid, "Idempotency-Key": "order-1"}}
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(**args)
    time.sleep(0.3)  # the retry arrives while the first is still running: it waits for it
    retry = client.with_options(timeout=30).chat.completions.create(**args)
    stub.state.delay = 0.0
    again = client.with_options(timeout=30).chat.completions.create(**args)
    assert retry.id == again.id and retry.choices[0].message.content == again.choices[0].message.content
    assert turns(base, tid) == 1


def test_keys_survive_a_restart_and_only_the_last_n_are_kept(stub: StubURL, tmp_path: Path) -> None:
    tid, ids = "idem-restart", {}
    with serve_memchat(stub, tmp_path, idempotency_keys=2) as url:
        for key in ("a", "b", "c"):
            ids[key] = chat(url, tid, f"Message {key}.", key=key).json()["id"]
    with serve_memchat(stub, tmp_path, idempotency_keys=2) as url:
        assert chat(url, tid, "Message c.", key="c").json()["id"] == ids["c"]
        assert turns(url, tid) == 3
        assert chat(url, tid, "Message a.", key="a").json()["id"] != ids["a"]  # forgotten: a new turn
        assert turns(url, tid) == 4


def test_graph_invoke_honours_the_idempotency_key(base: str) -> None:
    headers = {"X-Thread-ID": "idem-graph", "Idempotency-Key": "g-1"}
    body = {"input": {"messages": [{"role": "user", "content": "Remember the blue door."}]}}
    for _ in range(2):
        r = httpx.post(f"{base}/graph/invoke", json=body, headers=headers, timeout=60)
        assert r.status_code == 200 and r.json()["output"]["turn"] == 1
    other = {"input": {"messages": [{"role": "user", "content": "Remember the red door."}]}}
    r = httpx.post(f"{base}/graph/invoke", json=other, headers=headers, timeout=60)
    assert r.status_code == 422 and turns(base, "idem-graph") == 1
    r = httpx.post(f"{base}/graph/batch", json={"inputs": [body["input"]]}, headers=headers, timeout=60)
    assert r.status_code == 400


# ---- item 7: a busy thread cannot starve the server ------------------------------------------------
async def _burst(url: str, tid: str, n: int) -> tuple[list[tuple[str, httpx.Response]], list[float]]:
    """``n`` concurrent turns on one thread; meanwhile, the time other routes take to answer."""
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def send(i: int) -> tuple[str, httpx.Response]:
            text = f"message number {i}"
            body = {"model": "memchat", "user": "u1", "messages": [{"role": "user", "content": text}]}
            return text, await client.post("/v1/chat/completions", json=body, headers={"X-Thread-ID": tid})

        tasks = [asyncio.create_task(send(i)) for i in range(n)]
        await asyncio.sleep(0.5)
        probes = []
        for path in ("/v1/threads", "/health", "/v1/threads/cold/memory"):
            t0 = time.perf_counter()
            assert (await client.get(path)).status_code == 200
            probes.append(time.perf_counter() - t0)
        return list(await asyncio.gather(*tasks)), probes


def test_a_busy_thread_does_not_starve_the_server(stub: StubURL, tmp_path: Path) -> None:
    tid, n = "hot", 72
    with serve_memchat(stub, tmp_path, thread_wait=1.0, thread_queue=4, l0_turns=40) as url:
        assert chat(url, "cold", "warm up").status_code == 200
        stub.state.delay = 1.5  # the first turn holds the thread for longer than anyone waits
        results, probes = asyncio.run(_burst(url, tid, n))
        stub.state.delay = 0.0
        assert max(probes) < 2.0, probes  # before the fix: ~10 s (every worker waited for the thread)
        ok = [text for text, r in results if r.status_code == 200]
        busy = [r.json()["error"] for _, r in results if r.status_code != 200]
        assert len(ok) >= 1 and all(r.status_code in (200, 409) for _, r in results)
        assert all(e["code"] == "thread_busy" for e in busy)
        assert sum("MEMCHAT_THREAD_QUEUE" in e["message"] for e in busy) >= n // 2  # at once, no worker taken
        assert any("MEMCHAT_THREAD_WAIT" in e["message"] for e in busy)  # waited, then 409
        mem = httpx.get(f"{url}/v1/threads/{tid}/memory", timeout=30).json()
        assert mem["turns"] == len(ok) and sorted(t["user"] for t in mem["recent_turns"]) == sorted(ok)


def test_thread_locks_do_not_pile_up(base: str, mc: MemChat) -> None:
    """The per-thread lock table holds only locks in use (it used to keep one lock per thread ever seen)."""
    for i in range(5):
        assert chat(base, f"lk{i}", "hello").status_code == 200
    gc.collect()
    assert not [k for k in list(mc._locks.keys()) if k.startswith("lk")]
    held = mc.lock("lk-held")
    assert mc.lock("lk-held") is held  # every caller shares one lock while anyone holds it
