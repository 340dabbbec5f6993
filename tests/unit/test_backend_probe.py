"""The client side of the LLM backend: what it serves, clear errors, usage streaming, cached tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from memchat.backends import backend_check
from memchat.backends.backend_check import check_all, report
from memchat.backends.llm import BackendError, make_chat_model, probe_backend
from memchat.chat import MemChat
from memchat.settings import Settings
from tests.support.services import ChromaServer, free_port, unique_name
from tests.support.sglang_stub import DEFAULT_MODEL, ServerThread, StubURL, run_stub

pytest_plugins = ["tests.support.services"]  # pg_url, chroma_server
pytestmark = pytest.mark.timeout(120)
KEY = "sk-memchat-test"


def _settings(tmp_path: Path, url: str, **kw: Any) -> Settings:
    kw.setdefault("llm_api_key", SecretStr(KEY))
    return Settings(data_dir=tmp_path / "data", llm_base_url=url, _env_file=None, **kw)  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def stub() -> Iterator[StubURL]:
    with run_stub(api_key=KEY) as url:
        yield url


def test_probe_reports_sglang_model_and_context(stub: StubURL, tmp_path: Path) -> None:
    info = probe_backend(_settings(tmp_path, stub))
    assert info.kind == "sglang"
    assert info.model == DEFAULT_MODEL
    assert info.context_length == 32768
    assert info.base_url == stub


def test_wrong_key_names_the_key(stub: StubURL, tmp_path: Path) -> None:
    with pytest.raises(BackendError) as info:
        probe_backend(_settings(tmp_path, stub, llm_api_key=SecretStr("sk-wrong")))
    msg = str(info.value)
    assert "API key" in msg and "MEMCHAT_LLM_API_KEY" in msg and "401" in msg
    assert "sk-wrong" not in msg


def test_wrong_url_is_unreachable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match="unreachable") as info:
        probe_backend(_settings(tmp_path, url))
    assert url in str(info.value)


def test_url_without_v1_is_not_silently_accepted(stub: StubURL, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="404"):
        probe_backend(_settings(tmp_path, stub.root))


def test_budget_larger_than_the_context_is_refused(tmp_path: Path) -> None:
    with run_stub(api_key=KEY, context_length=8192) as url:
        with pytest.raises(BackendError) as info:
            probe_backend(_settings(tmp_path, url, max_input_tokens=32768))
        msg = str(info.value)
        assert "MEMCHAT_MAX_INPUT_TOKENS=32768" in msg and "8192" in msg and DEFAULT_MODEL in msg
        ok = probe_backend(_settings(tmp_path, url, max_input_tokens=8192))
        assert ok.context_length == 8192


def test_model_not_served(stub: StubURL, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="does not serve 'other-model'") as info:
        probe_backend(_settings(tmp_path, stub, llm_model="other-model"))
    assert DEFAULT_MODEL in str(info.value)
    assert probe_backend(_settings(tmp_path, stub, llm_model=DEFAULT_MODEL)).model == DEFAULT_MODEL


def test_plain_openai_compatible_server(tmp_path: Path) -> None:
    """A server without SGLang's /get_model_info (vLLM, llama.cpp, a proxy) is "openai-compatible"."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "m1", "object": "model", "max_model_len": 16384}]}

    server = ServerThread(app).start()
    try:
        info = probe_backend(_settings(tmp_path, f"http://127.0.0.1:{server.port}/v1", max_input_tokens=16384))
        assert (info.kind, info.model, info.context_length) == ("openai-compatible", "m1", 16384)
    finally:
        server.stop()


def test_chat_model_streams_usage(tmp_path: Path) -> None:
    llm: Any = make_chat_model(_settings(tmp_path, "http://127.0.0.1:9/v1"))
    assert llm.stream_usage is True


def test_two_turns_report_cached_tokens(tmp_path: Path) -> None:
    """End to end through MemChat on the SGLang stub: usage is requested, cached tokens are read."""
    with run_stub(api_key=KEY) as url:
        mc = MemChat(_settings(tmp_path, url, llm_model=DEFAULT_MODEL))
        first = mc.turn("t-cache", "My name is Erin and I live in Oslo.", user_id="u-cache")
        assert first.cached_tokens in (None, 0)  # SGLang leaves the field out when nothing was cached
        second = mc.turn("t-cache", "What city do I live in?", user_id="u-cache")
        assert second.cached_tokens is not None and second.cached_tokens > 0
        assert second.usage.get("input_tokens", 0) > second.cached_tokens
        chats = [b for b in url.state.requests_log if "messages" in b]
        assert chats and all(b.get("stream") is True for b in chats)
        assert all((b.get("stream_options") or {}).get("include_usage") is True for b in chats)
        assert url.state.last_usage is not None
        assert url.state.last_usage["prompt_tokens_details"]["cached_tokens"] == second.cached_tokens
        assert "Oslo" in (url.state.last_prompt or "")


# --------------------------------------------------------------------------- memchat check


def test_check_all_on_production_backends(tmp_path: Path, stub: StubURL, pg_url: str,
                                          chroma_server: ChromaServer) -> None:
    s = _settings(tmp_path, stub, checkpoint_url=pg_url, chroma_url=chroma_server.url,
                  chroma_collection=unique_name("check"))
    checks = check_all(s)
    assert [c.name for c in checks] == ["llm", "checkpoints", "vectors"]
    assert all(c.ok for c in checks), report(checks)
    text = report(checks)
    assert DEFAULT_MODEL in text and "sglang" in text and "32768" in text
    assert "PostgreSQL" in text and chroma_server.url in text and "all-MiniLM-L6-v2" in text
    assert not (tmp_path / "data" / "checkpoints.sqlite").exists()


def test_check_all_reports_each_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = free_port()
    s = _settings(tmp_path, f"http://127.0.0.1:{dead}/v1", checkpoint_url=f"postgresql://u:pw@127.0.0.1:{dead}/db",
                  chroma_url=f"http://127.0.0.1:{dead}")
    assert backend_check.main(s) == 1
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("FAIL") for line in lines), out
    assert "unreachable" in lines[0]
    assert "cannot connect to PostgreSQL" in lines[1] and ":pw@" not in out
    assert "MEMCHAT_CHROMA_URL" in lines[2]


def test_embedded_reply_caps_reach_llama_cpp_as_max_tokens(stub: StubURL, tmp_path: Path) -> None:
    """llama-cpp-python's server ignores ``max_completion_tokens`` and generated until its context was full."""
    settings = Settings(data_dir=tmp_path / "data", llm_api_key=SecretStr(KEY), llm_max_tokens=17,
                        _env_file=None)  # type: ignore[call-arg]
    assert settings.embedded
    model = make_chat_model(settings, base_url=stub)
    stub.state.requests_log.clear()
    model.invoke("hello")
    model.bind(max_completion_tokens=5).invoke("hi")  # how summaries and extraction cap their calls
    bodies = [b for b in stub.state.requests_log if "messages" in b]
    assert [b.get("max_tokens") for b in bodies] == [17, 5]
    assert all("max_completion_tokens" not in b for b in bodies)
    remote = make_chat_model(_settings(tmp_path, stub), base_url=stub)  # SGLang & co. take the current name
    assert remote._get_request_payload([("user", "x")])["max_completion_tokens"] == 256  # type: ignore[attr-defined]


def test_plain_messages_skip_the_sdk_transform_and_reach_the_server_unchanged(stub: StubURL, tmp_path: Path) -> None:
    """openai-python's per-message ``maybe_transform`` cost ~3 ms of GIL time per request; plain-text messages
    travel in ``extra_body`` instead, and the server receives the same messages (and the response format)."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    from memchat.backends.llm import json_schema_format

    model = make_chat_model(_settings(tmp_path, stub), base_url=stub)
    msgs = [SystemMessage("be brief"), HumanMessage("my name is Ana"), AIMessage("Hi Ana"), HumanMessage("and?")]
    payload = model._get_request_payload(msgs)  # type: ignore[attr-defined]
    assert payload["messages"] == [] and len(payload["extra_body"]["messages"]) == 4
    want = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "my name is Ana"},
            {"role": "assistant", "content": "Hi Ana"}, {"role": "user", "content": "and?"}]
    stub.state.requests_log.clear()
    model.invoke(msgs)
    list(model.stream(msgs))
    fmt = json_schema_format("ops", {"type": "object", "properties": {"ops": {"type": "array"}}})
    model.bind(response_format=fmt).invoke(msgs)
    bodies = [b for b in stub.state.requests_log if "messages" in b]
    assert [b["messages"] for b in bodies] == [want, want, want]
    assert bodies[2]["response_format"] == fmt and bodies[1]["stream"] is True
    parts = [HumanMessage(content=[{"type": "text", "text": "look"}])]  # content parts keep the SDK's path
    assert model._get_request_payload(parts)["messages"]  # type: ignore[attr-defined]
