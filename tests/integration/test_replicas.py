"""Two ``memchat serve`` replicas over one PostgreSQL and one Chroma server share every thread.

The replicas are separate processes configured by ``MEMCHAT_`` environment variables alone, each with
its own (unused) data directory; the LLM is the SGLang stub. A thread is continued turn by turn,
alternating between them, and nothing may be lost.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.services import (
    ChromaServer,
    PostgresServer,
    _die_with_parent,
    free_port,
    stop_process,
    tail,
    unique_name,
    wait_until,
)
from tests.support.sglang_stub import StubURL, run_stub

pytest_plugins = ["tests.support.services"]  # postgres_server, chroma_server
pytestmark = pytest.mark.timeout(240)

LLM_KEY = "sk-backend"
API_KEY = "sk-replicas"
THREAD = "replicated-thread"
USER = "u-replicas"
TURNS = 10
FIRST = "My name is Frida. I live in Bergen. I am allergic to walnuts."


@dataclass
class Replica:
    """One ``memchat serve`` process."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    data_dir: Path


def memchat_command() -> list[str]:
    """The ``memchat`` console script of this environment (or the same entry point through Python)."""
    script = Path(sys.executable).parent / "memchat"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from memchat.cli import main; main()"]


@pytest.fixture(scope="module")
def stub() -> Iterator[StubURL]:
    with run_stub(api_key=LLM_KEY) as url:
        yield url


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer,
             chroma_server: ChromaServer, stub: StubURL) -> Iterator[list[Replica]]:
    """Two replicas, started together, stopped afterwards whatever happens."""
    tmp_path = tmp_path_factory.mktemp("replicas")
    pg_url = postgres_server.new_database("replicas")
    collection = unique_name("replicas")
    started: list[Replica] = []
    try:
        for i in range(2):
            port = free_port()
            data_dir = tmp_path / f"replica{i}"
            data_dir.mkdir()
            env = {k: v for k, v in os.environ.items() if not k.startswith("MEMCHAT_")}
            env.update({
                "MEMCHAT_CHECKPOINT_URL": pg_url,
                "MEMCHAT_CHROMA_URL": chroma_server.url,
                "MEMCHAT_CHROMA_COLLECTION": collection,
                "MEMCHAT_LLM_BASE_URL": str(stub),
                "MEMCHAT_LLM_API_KEY": LLM_KEY,
                "MEMCHAT_API_KEY": API_KEY,
                "MEMCHAT_DATA_DIR": str(data_dir),
                "MEMCHAT_THREAD_WAIT": "300",  # six turns queued on a cold, loaded CI machine: no 409 here
                "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
            })
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
        yield started
    finally:
        for r in started:
            stop_process(r.proc)
        postgres_server.drop_database(pg_url)


def _chat(client: httpx.Client, replica: Replica, text: str, stream: bool, thread: str = THREAD) -> str:
    body = {"model": "memchat", "messages": [{"role": "user", "content": text}], "user": USER, "stream": stream}
    headers = {"X-Thread-ID": thread, "Authorization": f"Bearer {API_KEY}"}
    if not stream:
        res = client.post(f"{replica.url}/v1/chat/completions", json=body, headers=headers)
        assert res.status_code == 200, f"{res.status_code} {res.text}\n{tail(replica.log)}"
        return str(res.json()["choices"][0]["message"]["content"])
    parts: list[str] = []
    with client.stream("POST", f"{replica.url}/v1/chat/completions", json=body, headers=headers) as res:
        assert res.status_code == 200, f"{res.status_code}\n{tail(replica.log)}"
        import json

        for line in res.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                for choice in chunk.get("choices") or []:
                    parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


def test_one_thread_across_two_replicas(replicas: list[Replica], stub: StubURL) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(timeout=60) as client:
        for turn in range(1, TURNS + 1):
            replica = replicas[(turn - 1) % 2]  # A, B, A, B, ...
            text = FIRST if turn == 1 else f"Turn {turn}: tell me something about fjords, part {turn}."
            reply = _chat(client, replica, text, stream=turn % 3 == 0)
            assert reply.strip(), f"empty reply on turn {turn}"

        for replica in replicas:
            res = client.get(f"{replica.url}/v1/threads/{THREAD}/memory", headers=headers)
            assert res.status_code == 200, res.text
            mem = res.json()
            assert mem["turns"] == TURNS
            assert mem["user_id"] == USER
            slots = {s["key"].split(":", 1)[-1]: s for s in mem["slots"]}
            assert slots["name"]["value"] == "Frida" and slots["name"]["turn"] == 1
            assert slots["location"]["value"] == "Bergen"
            assert slots["allergy"]["value"] == "walnuts"
            listed = client.get(f"{replica.url}/v1/threads", headers=headers).json()["data"]
            assert [(t["id"], t["turns"]) for t in listed] == [(THREAD, TURNS)]

    # the last reply request (summaries and slot extraction run after the reply, in the background, and
    # ask for a JSON schema)
    replies = [r for r in stub.state.requests_log
               if (r.get("response_format") or {}).get("type") != "json_schema"]
    prompt = "\n".join(str(m.get("content")) for m in replies[-1]["messages"])
    assert "Frida" in prompt and "walnuts" in prompt and "Bergen" in prompt
    assert f"Turn {TURNS}:" in prompt
    for r in replicas:  # nothing was kept locally: all state is in PostgreSQL and the Chroma server
        assert not (r.data_dir / "checkpoints.sqlite").exists()
        assert not (r.data_dir / "chroma").exists()


def test_concurrent_turns_of_one_thread_on_two_replicas(replicas: list[Replica]) -> None:
    """A client that does not wait for its previous answer (or a retry on another replica) loses no turn."""
    import concurrent.futures

    thread = "concurrent-thread"
    with httpx.Client(timeout=120) as client, concurrent.futures.ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda i: _chat(client, replicas[i % 2], f"Concurrent message {i}.", False, thread),
                                range(6)))
        assert all(r.strip() for r in replies)
        mem = client.get(f"{replicas[0].url}/v1/threads/{thread}/memory",
                         headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert mem["turns"] == 6
