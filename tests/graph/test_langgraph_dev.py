"""``langgraph dev`` serves the graph from langgraph.json offline; langgraph-sdk runs a turn on it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_sync_client

from tests.support.serving import STUB_MODEL, StubURL, free_port, run_stub

ROOT = Path(__file__).resolve().parents[2]
LANGGRAPH = Path(sys.executable).with_name("langgraph")


def test_langgraph_json_points_at_the_module_graph() -> None:
    cfg = json.loads((ROOT / "langgraph.json").read_text())
    assert cfg["graphs"] == {"memchat": "./graph/builder.py:graph"}
    assert cfg["dependencies"] == ["."]
    from memchat.graph.builder import graph

    assert graph.checkpointer is None  # langgraph dev refuses a graph compiled with its own checkpointer


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, StubURL]]:
    """``langgraph dev`` in a subprocess (cwd: the repo root, as langgraph.json's paths are relative to it)
    with the stub LLM and a temp data dir."""
    if not LANGGRAPH.exists():
        pytest.skip("langgraph-cli is not installed")
    work = tmp_path_factory.mktemp("lgdev")
    port = free_port()
    with run_stub() as stub:
        env = dict(os.environ, LANGGRAPH_CLI_NO_ANALYTICS="1", LANGGRAPH_NO_VERSION_CHECK="true",
                   LANGSMITH_TRACING="false", LANGCHAIN_TRACING_V2="false", HF_HUB_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", ANONYMIZED_TELEMETRY="False",
                   MEMCHAT_LLM_BASE_URL=str(stub), MEMCHAT_LLM_MODEL=STUB_MODEL,
                   MEMCHAT_DATA_DIR=str(work / "data"), MEMCHAT_CHECKPOINT_URL="")
        log = (work / "dev.log").open("wb")
        proc = subprocess.Popen(
            [str(LANGGRAPH), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port),
             "--config", str(ROOT / "langgraph.json")],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    pytest.fail("langgraph dev exited:\n" + (work / "dev.log").read_text()[-3000:])
                try:
                    if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("langgraph dev did not start:\n" + (work / "dev.log").read_text()[-3000:])
                time.sleep(0.3)
            yield url, stub
        finally:
            _stop(proc)
            log.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the process group started for langgraph dev (uvicorn and its workers)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_sdk_thread_run_and_state(dev_server: tuple[str, StubURL]) -> None:
    url, stub = dev_server
    client = get_sync_client(url=url)
    assistants = client.assistants.search(graph_id="memchat")
    assert assistants and assistants[0]["graph_id"] == "memchat"

    thread = client.threads.create()
    tid = thread["thread_id"]
    out = client.runs.wait(tid, "memchat", input={"messages": [
        {"role": "user", "content": "My name is Zhang Wei and my order number is #A-10057"}]},
        config={"configurable": {"user_id": "zw"}})
    assert isinstance(out, dict) and out["turn"] == 1
    assert out["messages"][-1]["type"] == "ai" and out["messages"][-1]["content"].startswith("Stub reply")

    out = client.runs.wait(tid, "memchat", input={"messages": [{"role": "user", "content": "What is my name?"}]},
                           config={"configurable": {"user_id": "zw"}})
    assert isinstance(out, dict) and out["turn"] == 2

    state = client.threads.get_state(tid)
    values = state["values"]
    assert isinstance(values, dict)
    assert values["turn"] == 2 and values["user_id"] == "zw"
    assert values["slots"]["fact:name"]["value"] == "Zhang Wei"
    assert values["slots"]["fact:order_number"]["value"] == "#A-10057"
    sent = httpx.get(f"{stub.root}/_stats").json()["last_request"]["messages"]
    assert "Zhang Wei" in sent[0]["content"] and sent[-1]["content"].endswith("What is my name?")
