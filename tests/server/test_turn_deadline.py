"""MEMCHAT_TURN_TIMEOUT bounds a whole turn, LLM retries included: 504 ``turn_timeout`` within the deadline
plus a second, and the thread is unchanged (the cut turn is rolled back)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.support.serving import StubURL, serve_memchat

DEADLINE = 2.5


def chat(base: str, tid: str, text: str) -> httpx.Response:
    body = {"model": "memchat", "user": "u1", "messages": [{"role": "user", "content": text}]}
    return httpx.post(f"{base}/v1/chat/completions", json=body, headers={"X-Thread-ID": tid}, timeout=60)


def view(base: str, tid: str) -> dict[str, object]:
    mem = httpx.get(f"{base}/v1/threads/{tid}/memory", timeout=30).json()
    return {k: mem[k] for k in ("turns", "recent_turns", "slots", "l1")}


@pytest.mark.parametrize("fault", [{"mode": "hang"}, {"mode": "error", "delay": 0.6}], ids=["hang", "retries"])
def test_a_turn_past_its_deadline_is_a_504_and_leaves_the_thread_unchanged(
        stub: StubURL, tmp_path: Path, fault: dict[str, object]) -> None:
    with serve_memchat(stub, tmp_path, turn_timeout=DEADLINE, llm_timeout=30, llm_max_retries=6,
                       background_summaries=False) as base:
        httpx.post(f"{stub.root}/_control", json={"mode": "ok", "delay": 0, "reset": True})
        for _ in range(20):  # the first turn loads the embedder and may itself take longer than the deadline
            if chat(base, "warm-up", "Hello.").status_code == 200:
                break
        assert chat(base, "t1", "My name is Ada and I live in Lyon.").status_code == 200
        before = view(base, "t1")
        httpx.post(f"{stub.root}/_control", json=fault)
        try:
            t0 = time.monotonic()
            r = chat(base, "t1", "I moved to Porto last week.")
            took = time.monotonic() - t0
        finally:
            httpx.post(f"{stub.root}/_control", json={"mode": "ok", "delay": 0})
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "turn_timeout"
        assert took < DEADLINE + 1.0, took
        time.sleep(DEADLINE)  # the cut turn ends in the background (its LLM call had only the time left)
        assert view(base, "t1") == before
        nxt = chat(base, "t1", "What city do I live in?")
        assert nxt.status_code == 200, nxt.text
        assert nxt.json()["memchat"]["turn"] == 2
