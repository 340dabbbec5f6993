"""Crash safety of ``memchat serve``: kill -9 in the middle of a turn (extract, slots and retrieve ran;
respond is waiting on the LLM), restart: the thread holds the whole turn or none of it, and the retried
turn adds no duplicate memories. The server's own log (JSON lines with request ids) is checked too.
Run on each vector store (embedded Chroma, a Milvus Lite file): the store must come back whole after kill -9.

(tests/integration/test_crash_poison.py does the same for ``memchat chat``.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.serving import STUB_MODEL, free_port, run_stub

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-crash"
AUTH = {"Authorization": f"Bearer {KEY}"}
SECRET = "55-771"


class Serve:
    """``memchat serve`` in a subprocess, its log in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "memchat.cli", "serve", "--port", str(self.port)],
                                         cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.base}/health", timeout=2).json().get("status") == "ok":
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)

    def chat(self, text: str, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.base}/v1/chat/completions",
                          json={"model": "memchat", "user": "li", "messages": [{"role": "user", "content": text}]},
                          headers={**AUTH, "X-Thread-ID": "crash", **kw.pop("headers", {})}, timeout=120, **kw)

    def memory(self) -> dict[str, Any]:
        r = httpx.get(f"{self.base}/v1/threads/crash/memory", headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.mark.parametrize("store", ["chroma", "milvus"])
def test_kill_9_of_memchat_serve_mid_turn(tmp_path: Path, store: str) -> None:
    log = tmp_path / "serve.log"
    with run_stub() as stub:
        env = dict(os.environ, MEMCHAT_VECTOR_STORE=store, MEMCHAT_LLM_BASE_URL=str(stub), MEMCHAT_LLM_MODEL=STUB_MODEL,
                   MEMCHAT_DATA_DIR=str(tmp_path / "data"), MEMCHAT_API_KEY=KEY, MEMCHAT_LLM_TIMEOUT="120",
                   MEMCHAT_LOG_FORMAT="json", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        first = Serve(env, log)
        try:
            assert first.chat("My name is Li Ming.").status_code == 200
            before = first.memory()
            assert before["turns"] == 1 and before["memories"] == {"thread": 2, "user": 1}

            httpx.post(f"{stub.root}/_control", json={"mode": "hang"})
            sent = httpx.get(f"{stub.root}/_stats").json()["requests"]
            outcome: dict[str, Any] = {}

            def send() -> None:
                try:
                    outcome["response"] = first.chat(f"My order number is {SECRET}.")
                except httpx.HTTPError as exc:
                    outcome["error"] = exc

            client = threading.Thread(target=send)
            client.start()
            deadline = time.monotonic() + 60
            while httpx.get(f"{stub.root}/_stats").json()["requests"] == sent:  # respond is waiting on the LLM
                assert time.monotonic() < deadline and client.is_alive()
                time.sleep(0.05)
            time.sleep(0.3)
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(30)
            client.join(30)
            assert "error" in outcome and "response" not in outcome  # the connection died with the server
        finally:
            first.stop()
            httpx.post(f"{stub.root}/_control", json={"mode": "ok"})

        second = Serve(env, log)
        try:
            after = second.memory()  # none of the interrupted turn
            assert after["turns"] == 1 and after["recent_turns"] == before["recent_turns"]
            assert after["slots"] == before["slots"] and after["memories"] == before["memories"]
            assert "fact:order_number" not in {s["key"] for s in after["slots"]}

            r = second.chat(f"My order number is {SECRET}.", headers={"X-Request-ID": "retry-after-crash"})
            assert r.status_code == 200 and r.json()["memchat"]["turn"] == 2
            assert r.headers["x-request-id"] == "retry-after-crash"
            done = second.memory()  # the whole retried turn, once
            assert done["turns"] == 2 and len(done["recent_turns"]) == 2
            assert done["memories"] == {"thread": 4, "user": 2}  # + message and reply, + one fact: no duplicates
            assert {s["key"]: s["value"] for s in done["slots"]}["fact:order_number"] == SECRET
            assert second.chat("Thanks!").json()["memchat"]["turn"] == 3
            assert second.memory()["memories"] == {"thread": 6, "user": 2}
        finally:
            second.stop()

    # the server logs JSON lines with request ids, and no message content at INFO
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert records and len(records) == len([x for x in log.read_text().splitlines() if x.strip()])
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    retry = [r for r in records if r.get("request_id") == "retry-after-crash"]
    assert {r["logger"] for r in retry} >= {"memchat.access", "memchat.turn"}
    access = next(r for r in retry if r["logger"] == "memchat.access")
    assert access["status"] == 200 and access["path"] == "/v1/chat/completions" and access["thread_id"] == "crash"
    assert any("LLM backend: model=" in r["msg"] for r in records)
    assert SECRET not in log.read_text() and "Li Ming" not in log.read_text()
