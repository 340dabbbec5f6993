"""Tests for the SGLang-compatible stub server (``tests/support/sglang_stub.py``) via the openai SDK."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.sglang_stub import StubURL, render_chatml, run_stub, schema_example

API_KEY = "test-key"
MODEL = "Qwen/Qwen2.5-7B-Instruct"
SYSTEM = "You are memchat. " * 20


@pytest.fixture(scope="module")
def stub() -> Iterator[StubURL]:
    """One stub server (with an API key) for the whole module."""
    with run_stub(api_key=API_KEY, model=MODEL) as url:
        yield url


@pytest.fixture(autouse=True)
def _reset(stub: StubURL) -> None:
    """Each test starts with empty stats/cache and no faults."""
    r = httpx.post(f"{stub.root}/_control", json={"mode": "ok", "delay": 0, "reset": True, "array_items": 1})
    assert r.status_code == 200


@pytest.fixture()
def client(stub: StubURL) -> openai.OpenAI:
    """Official OpenAI client pointed at the stub, no retries."""
    return openai.OpenAI(base_url=stub, api_key=API_KEY, max_retries=0, timeout=5.0)


def _msgs(user: str, system: str = SYSTEM) -> list[Any]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def test_base_url_shape(stub: StubURL) -> None:
    assert stub.startswith("http://127.0.0.1:") and stub.endswith("/v1")
    assert stub == f"{stub.root}/v1"


def test_health_and_model_info(stub: StubURL, client: openai.OpenAI) -> None:
    health = httpx.get(f"{stub.root}/health")  # no auth needed
    assert health.status_code == 200 and health.content == b""

    info = httpx.get(f"{stub.root}/get_model_info", headers={"Authorization": f"Bearer {API_KEY}"})
    assert info.status_code == 200
    assert info.json() == {"model_path": MODEL, "tokenizer_path": MODEL, "is_generation": True}
    assert httpx.get(f"{stub.root}/get_model_info").status_code == 401

    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    card = models.data[0].model_dump()
    assert card["owned_by"] == "sglang" and card["max_model_len"] == 32768 and card["root"] == MODEL


def test_plain_chat_completion(client: openai.OpenAI, stub: StubURL) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=_msgs("What is my cat's name?"))
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Stub reply #1: What is my cat's name?"
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 20 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.usage.prompt_tokens_details is None  # nothing cached on a fresh server

    stats = httpx.get(f"{stub.root}/_stats").json()
    assert stats["requests"] == 1
    assert stats["last_request"]["messages"][1]["content"] == "What is my cat's name?"
    assert stats["last_prompt"].endswith("<|im_start|>assistant\n")


def test_cached_tokens_reported_on_shared_prefix(client: openai.OpenAI, stub: StubURL) -> None:
    first = client.chat.completions.create(model=MODEL, messages=_msgs("Remember: I live in Oslo."))
    assert first.usage is not None and first.usage.prompt_tokens_details is None
    raw = httpx.get(f"{stub.root}/_stats").json()["last_usage"]
    assert raw["prompt_tokens_details"] is None  # SGLang sends null, not {"cached_tokens": 0}

    history = _msgs("Remember: I live in Oslo.") + [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Where do I live?"},
    ]
    second = client.chat.completions.create(model=MODEL, messages=history)
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens
    # The whole first turn (prompt + reply + <|im_end|>) is a prefix of the second prompt.
    assert cached == first.usage.prompt_tokens + first.usage.completion_tokens
    assert cached is not None and cached < second.usage.prompt_tokens

    # An identical prompt can be cached except for its last token, as in SGLang.
    again = client.chat.completions.create(model=MODEL, messages=history)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1

    assert httpx.post(f"{stub.root}/flush_cache", headers={"Authorization": f"Bearer {API_KEY}"}).is_success
    flushed = client.chat.completions.create(model=MODEL, messages=history)
    assert flushed.usage is not None and flushed.usage.prompt_tokens_details is None


def test_streaming_with_include_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=_msgs("stream these words please"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 3  # word by word
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Stub reply #1: stream these words please"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 0


def test_streaming_without_usage_raw_sse(stub: StubURL) -> None:
    body = {"model": MODEL, "messages": _msgs("hi"), "stream": True}
    with httpx.stream(
        "POST", f"{stub}/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(ln[len("data: ") :]) for ln in lines[:-1]]
    assert all(p["choices"] for p in payloads)  # no usage chunk unless asked


def test_json_schema_mode_returns_parseable_json(client: openai.OpenAI) -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "facts": {"type": "array", "items": {"$ref": "#/$defs/Fact"}},
            "topic": {"type": "string"},
            "importance": {"type": "integer", "minimum": 1, "maximum": 5},
            "urgent": {"type": "boolean"},
            "kind": {"type": "string", "enum": ["preference", "event"]},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["facts", "topic", "importance", "urgent", "kind", "note"],
        "additionalProperties": False,
        "$defs": {
            "Fact": {
                "type": "object",
                "properties": {"key": {"type": "string"}, "value": {"type": "string"}},
                "required": ["key", "value"],
            }
        },
    }
    resp = client.chat.completions.create(
        model=MODEL,
        messages=_msgs("I prefer green tea in the morning"),
        response_format={"type": "json_schema", "json_schema": {"name": "Memory", "schema": schema}},
    )
    data = json.loads(resp.choices[0].message.content or "")
    assert set(data) == set(schema["properties"])
    assert data["importance"] == 1 and data["urgent"] is False and data["kind"] == "preference"
    assert isinstance(data["facts"], list) and len(data["facts"]) == 1
    assert set(data["facts"][0]) == {"key", "value"}
    assert data["topic"].startswith("I prefer")
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(data, schema)


def test_json_object_mode(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=_msgs("reply in json"), response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(resp.choices[0].message.content or ""), dict)


def test_max_tokens_and_stop(client: openai.OpenAI) -> None:
    short = client.chat.completions.create(model=MODEL, messages=_msgs("a b c d e f g"), max_tokens=3)
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 3
    assert short.choices[0].message.content == "Stub reply #"

    stopped = client.chat.completions.create(model=MODEL, messages=_msgs("hello"), stop=[":", "reply"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == "Stub "


def test_plain_completions_endpoint(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=MODEL, prompt="The capital of Norway is", max_tokens=64)
    assert resp.object == "text_completion"
    assert resp.choices[0].text == "Stub completion #1: The capital of Norway is"
    assert resp.usage is not None and resp.usage.prompt_tokens == 5
    default = client.completions.create(model=MODEL, prompt="word " * 40)
    assert default.choices[0].finish_reason == "length"  # SGLang's default max_tokens is 16
    assert default.usage is not None and default.usage.completion_tokens == 16


def test_wrong_key_is_401(stub: StubURL) -> None:
    bad = openai.OpenAI(base_url=stub, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.chat.completions.create(model=MODEL, messages=_msgs("hi"))
    assert exc.value.status_code == 401
    raw = httpx.post(f"{stub}/chat/completions", json={"messages": _msgs("hi")})
    assert raw.status_code == 401 and raw.json()["error"]["code"] == 401
    assert httpx.get(f"{stub.root}/_stats").json()["requests"] == 0  # rejected before the handler


def test_control_error_mode_gives_500(stub: StubURL, client: openai.OpenAI) -> None:
    assert httpx.post(f"{stub.root}/_control", json={"mode": "error"}).json()["mode"] == "error"
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model=MODEL, messages=_msgs("hi"))
    assert exc.value.status_code == 500
    httpx.post(f"{stub.root}/_control", json={"mode": "ok"})
    assert client.chat.completions.create(model=MODEL, messages=_msgs("hi")).choices[0].message.content


def test_control_hang_times_out_client(stub: StubURL) -> None:
    httpx.post(f"{stub.root}/_control", json={"mode": "hang"})
    impatient = openai.OpenAI(base_url=stub, api_key=API_KEY, max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model=MODEL, messages=_msgs("hi"))
    httpx.post(f"{stub.root}/_control", json={"mode": "ok"})


def test_n_greater_than_one_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=_msgs("hi"), n=2)


def test_scripted_replies(stub: StubURL, client: openai.OpenAI) -> None:
    httpx.post(f"{stub.root}/_control", json={"replies": ['{"summary": "scripted"}']})
    first = client.chat.completions.create(model=MODEL, messages=_msgs("x"))
    assert first.choices[0].message.content == '{"summary": "scripted"}'
    second = client.chat.completions.create(model=MODEL, messages=_msgs("x"))
    assert (second.choices[0].message.content or "").startswith("Stub reply #2")


def test_context_length_exceeded() -> None:
    with run_stub(context_length=64) as url:
        c = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="context length"):
            c.chat.completions.create(model=MODEL, messages=_msgs("long " * 100, system="s"))


def test_render_chatml_qwen_default_system() -> None:
    prompt = render_chatml([{"role": "user", "content": "hi"}], MODEL)
    assert prompt.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_schema_example_recursion_is_bounded() -> None:
    schema = {
        "$ref": "#/$defs/Node",
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {"child": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}},
            }
        },
    }
    assert isinstance(schema_example(schema, "x"), dict)


def test_script_entry_point_prints_ready() -> None:
    script = Path(__file__).resolve().parents[1] / "support" / "sglang_stub.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--api-key", "k"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        root = line.split(" ", 1)[1]
        assert httpx.get(f"{root}/health").status_code == 200
        assert httpx.get(f"{root}/v1/models").status_code == 401
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_fallback_tokenizer_still_reports_cache() -> None:
    from tests.support.sglang_stub import FallbackCodec

    with run_stub() as url:
        url.state.codec = FallbackCodec()
        c = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        first = c.chat.completions.create(model=MODEL, messages=_msgs("one two three"), max_tokens=4)
        assert first.choices[0].finish_reason == "length"
        assert first.usage is not None and first.usage.prompt_tokens_details is None
        second = c.chat.completions.create(model=MODEL, messages=_msgs("one two four"))
        assert second.usage is not None and second.usage.prompt_tokens_details is not None
        assert 0 < (second.usage.prompt_tokens_details.cached_tokens or 0) < second.usage.prompt_tokens
