"""The graph behind LangServe: RemoteRunnable with X-Thread-ID, behind the same Bearer auth."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langserve import RemoteRunnable

from tests.support.serving import StubURL, serve_memchat

KEY = "sk-langserve"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def base(stub: StubURL, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_memchat(stub, tmp_path_factory.mktemp("ls"), api_key=KEY, llm_max_retries=0) as url:
        yield url


def remote(base: str, thread: str | None = "ls-1", user: str | None = "ann", key: str = KEY) -> RemoteRunnable:
    headers = {"Authorization": f"Bearer {key}"}
    if thread:
        headers["X-Thread-ID"] = thread
    if user:
        headers["X-User-ID"] = user
    return RemoteRunnable(f"{base}/graph", headers=headers, timeout=60)


def test_invoke_with_thread_header_keeps_memory(base: str, stub: StubURL) -> None:
    r = remote(base)
    out = r.invoke({"messages": [SystemMessage("You are a ship's cook."),
                                 HumanMessage("My name is Zhang Wei and my order number is #A-10057")]})
    assert out["turn"] == 1 and out["user_id"] == "ann"
    assert isinstance(out["messages"][-1], AIMessage) and out["messages"][-1].content.startswith("Stub reply")
    assert {"fact:name", "fact:order_number"} <= set(out["slots"])

    out = r.invoke({"messages": [{"role": "user", "content": "What is my order number?"}]})
    assert out["turn"] == 2
    sent = httpx.get(f"{stub.root}/_stats").json()["last_request"]["messages"]
    assert sent[0]["content"].startswith("You are a ship's cook.") and "#A-10057" in sent[0]["content"]
    assert [m["role"] for m in sent[1:]] == ["user", "assistant", "user"]

    mem = httpx.get(f"{base}/v1/threads/ls-1/memory", headers=AUTH).json()
    assert mem["turns"] == 2 and mem["user_id"] == "ann"
    assert "ls-1" in [t["id"] for t in httpx.get(f"{base}/v1/threads", headers=AUTH).json()["data"]]


def test_stream_yields_reply_tokens_then_the_state(base: str) -> None:
    chunks = list(remote(base, thread="ls-stream").stream({"messages": [("user", "Tell me about tea")]}))
    tokens = [c["token"] for c in chunks[:-1]]
    assert len(tokens) > 1  # the reply streams as the model writes it (it used to come as one final chunk)
    final = chunks[-1]
    assert final["turn"] == 1 and "".join(tokens) == final["messages"][-1].content
    assert remote(base, thread="ls-stream").invoke({"messages": [("user", "and coffee?")]})["turn"] == 2


def test_batch_runs_one_turn_per_input(base: str) -> None:
    outs = remote(base, thread="ls-batch").batch([{"messages": [("user", "one")]}])
    assert outs[0]["turn"] == 1


def test_thread_from_config_and_missing_thread(base: str) -> None:
    out = remote(base, thread=None).invoke({"messages": [("user", "hello")]},
                                           config={"configurable": {"thread_id": "ls-config"}})
    assert out["turn"] == 1
    with pytest.raises(httpx.HTTPStatusError) as exc:
        remote(base, thread=None).invoke({"messages": [("user", "hello")]})
    assert exc.value.response.status_code == 400
    assert "X-Thread-ID" in exc.value.response.text


def test_same_auth_as_the_api(base: str) -> None:
    with pytest.raises(httpx.HTTPStatusError) as exc:
        remote(base, key="wrong").invoke({"messages": [("user", "hello")]})
    assert exc.value.response.status_code == 401
    assert httpx.get(f"{base}/graph/input_schema").status_code == 401
    schema = httpx.get(f"{base}/graph/input_schema", headers=AUTH).json()
    assert "messages" in schema["properties"]
    assert httpx.get(f"{base}/graph/playground/", headers=AUTH).status_code == 200


def test_body_that_is_not_json_is_400(base: str) -> None:
    """Bytes that are not UTF-8 JSON (found by schemathesis) are a 400 on every run route, not a 500."""
    headers = {**AUTH, "Content-Type": "application/json", "X-Thread-ID": "ls-bad"}
    for route in ("invoke", "batch", "stream", "stream_log", "stream_events"):
        r = httpx.post(f"{base}/graph/{route}", content=b"\xff\xfe0x\x1a", headers=headers)
        assert r.status_code == 400, (route, r.status_code, r.text)
        assert "not valid JSON" in r.json()["error"]["message"]
