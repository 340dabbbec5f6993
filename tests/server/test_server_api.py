"""The OpenAI-compatible API end to end: the real openai SDK against uvicorn, the stub LLM behind MemChat."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from memchat.backends.engine import Engine
from memchat.chat import MemChat
from memchat.server.app import create_app
from memchat.server.stateless import bm25_recall, build_prompt, pair_turns
from memchat.settings import Settings
from tests.support.fakes import ScriptedChatModel
from tests.support.serving import STUB_MODEL, StubURL, free_port, serve_app

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-memchat-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_CHARS = 20_000


@pytest.fixture(scope="module")
def mc(stub: StubURL, tmp_path_factory: pytest.TempPathFactory) -> MemChat:
    """A MemChat on the stub (no retries, short timeout: the fault tests stay fast)."""
    settings = Settings(llm_base_url=stub, llm_model=STUB_MODEL, data_dir=tmp_path_factory.mktemp("api"),
                        api_key=KEY, max_request_chars=MAX_CHARS, llm_max_retries=0, llm_timeout=3.0,
                        _env_file=None)  # type: ignore[call-arg]
    return MemChat(settings)


@pytest.fixture(scope="module")
def base(mc: MemChat) -> Iterator[str]:
    """The memchat server's root URL."""
    with serve_app(create_app(mc.settings, mc)) as url:
        yield url


@pytest.fixture(autouse=True)
def _stub_ok(stub: StubURL) -> None:
    httpx.post(f"{stub.root}/_control", json={"mode": "ok", "delay": 0, "reset": True})


@pytest.fixture()
def client(base: str) -> openai.OpenAI:
    """The official OpenAI SDK pointed at memchat."""
    return openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=30)


def thread(tid: str) -> dict[str, str]:
    """Headers selecting a server-side thread (and a user of its own: no recall across tests)."""
    return {"X-Thread-ID": tid, "X-User-ID": f"user-{tid}"}


def stats(stub: StubURL) -> dict[str, Any]:
    """What the stub received."""
    return httpx.get(f"{stub.root}/_stats").json()  # type: ignore[no-any-return]


def respond_requests(stub: StubURL) -> list[dict[str, Any]]:
    """The reply calls the stub got (summaries are the ones with a JSON schema)."""
    return [r for r in stats(stub)["requests_log"]
            if (r.get("response_format") or {}).get("type") != "json_schema"]


def memory(base: str, tid: str) -> httpx.Response:
    return httpx.get(f"{base}/v1/threads/{tid}/memory", headers=AUTH)


def say(client: openai.OpenAI, tid: str, text: str, **kw: Any) -> Any:
    return client.chat.completions.create(model="memchat", messages=[{"role": "user", "content": text}],
                                          extra_headers=thread(tid), **kw)


# ---- health, auth, models ---------------------------------------------------------------------


def test_health_needs_no_key(base: str) -> None:
    r = httpx.get(f"{base}/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["backend"] == {"model": STUB_MODEL, "context_length": 32768, "kind": "sglang"}


def test_auth_401_without_and_with_wrong_key(base: str) -> None:
    c = openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        c.chat.completions.create(model="memchat", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 401
    body = exc.value.body
    assert isinstance(body, dict) and body["code"] == "invalid_api_key" and body["message"] == "Invalid API key"
    chat = {"model": "memchat", "messages": [{"role": "user", "content": "hi"}]}
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {KEY}"}):
        r = httpx.post(f"{base}/v1/chat/completions", json=chat, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    for path in ("/v1/models", "/v1/threads", "/graph/input_schema", "/docs"):
        r = httpx.get(f"{base}{path}")
        assert r.status_code == 401, path
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{base}{path}", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.post(f"{base}/health").status_code == 401  # only GET /health is open
    # the page needs the key too (Bearer or the /login cookie): see tests/server/test_security_auth.py
    assert httpx.get(f"{base}/").status_code == 401
    assert httpx.get(f"{base}/static/app.js").status_code == 401
    assert httpx.get(f"{base}/", headers=AUTH).status_code == 200


def test_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["memchat"]
    assert models.data[0].model_dump()["backend_model"] == STUB_MODEL


# ---- chat with a server-side thread -----------------------------------------------------------


def test_plain_turns_keep_memory_server_side(client: openai.OpenAI, base: str, stub: StubURL) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="memchat", messages=[{"role": "user", "content": "My cat is called Mochi."}],
        extra_headers=thread("plain"))
    assert raw.headers["x-thread-id"] == "plain"
    first = raw.parse()
    assert first.object == "chat.completion" and first.model == "memchat"
    assert first.choices[0].message.content == "Stub reply #1: My cat is called Mochi."
    assert first.choices[0].finish_reason == "stop"
    u = first.usage
    assert u is not None and u.prompt_tokens > 50 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details is not None and u.prompt_tokens_details.cached_tokens == 0

    second = say(client, "plain", "What is my cat called?")
    sent = respond_requests(stub)[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]  # history from the checkpoint
    assert "Mochi" in sent[1]["content"] and sent[2]["content"] == first.choices[0].message.content
    u2 = second.usage
    assert u2 is not None and u2.prompt_tokens_details is not None
    assert u2.prompt_tokens_details.cached_tokens and u2.prompt_tokens_details.cached_tokens >= u.prompt_tokens
    extra = second.model_dump()["memchat"]
    assert extra["thread_id"] == "plain" and extra["turn"] == 2 and extra["prefix_reuse"] > 0.5
    assert memory(base, "plain").json()["turns"] == 2


def test_thread_from_body_and_user_from_header(client: openai.OpenAI, base: str) -> None:
    client.chat.completions.create(model="memchat", messages=[{"role": "user", "content": "hello"}],
                                   extra_body={"thread_id": "body-thread"}, extra_headers={"X-User-ID": "carol"})
    client.chat.completions.create(model="memchat", messages=[{"role": "user", "content": "hello"}],
                                   user="dave", extra_headers=thread("user-field"))
    rows = {t["id"]: t for t in httpx.get(f"{base}/v1/threads", headers=AUTH).json()["data"]}
    assert rows["body-thread"]["user_id"] == "carol" and rows["body-thread"]["turns"] == 1
    assert rows["user-field"]["user_id"] == "dave"
    only = httpx.get(f"{base}/v1/threads", params={"user": "carol"}, headers=AUTH).json()["data"]
    assert [t["id"] for t in only] == ["body-thread"]


def test_system_message_sets_and_changes_persona(client: openai.OpenAI, stub: StubURL) -> None:
    def ask(system: str | None, text: str) -> str:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        client.chat.completions.create(model="memchat", messages=msgs, extra_headers=thread("persona"))  # type: ignore[arg-type]
        return str(respond_requests(stub)[-1]["messages"][0]["content"])

    assert ask("You are Captain Hook, a pirate.", "hi").startswith("You are Captain Hook, a pirate.")
    assert ask(None, "and again").startswith("You are Captain Hook")  # kept by the thread
    assert ask("You are a librarian.", "now?").startswith("You are a librarian.")


def test_streaming_with_usage(client: openai.OpenAI, base: str) -> None:
    stream = say(client, "stream", "Tell me something nice.", stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Stub reply #1: Tell me something nice."
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # token by token
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 50
    assert last.usage.prompt_tokens_details is not None
    assert memory(base, "stream").json()["recent_turns"][-1]["assistant"] == text


def test_streaming_raw_sse_ends_with_done(base: str) -> None:
    body = {"model": "memchat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body,
                      headers={**AUTH, "X-Thread-ID": "raw-sse"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(ln[len("data: "):]) for ln in lines[:-1]]
    assert all(p["choices"] and "usage" not in p for p in payloads)  # no usage unless asked


def test_client_hanging_up_mid_stream_leaves_the_whole_turn_saved(base: str) -> None:
    body = {"model": "memchat", "messages": [{"role": "user", "content": "one two three four five six"}],
            "stream": True}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body,
                      headers={**AUTH, **thread("gone")}, timeout=60) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # read the first event, then hang up
    deadline = time.monotonic() + 15
    while memory(base, "gone").status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.1)
    mem = memory(base, "gone").json()
    assert mem["turns"] == 1 and mem["recent_turns"][0]["assistant"].startswith("Stub reply")


def test_json_modes_reach_the_backend(client: openai.OpenAI, stub: StubURL) -> None:
    r = say(client, "json", "Give me JSON about tea.", response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)
    assert respond_requests(stub)[-1]["response_format"] == {"type": "json_object"}

    schema = {"type": "object", "properties": {"drink": {"type": "string"}, "cups": {"type": "integer"}},
              "required": ["drink", "cups"]}
    r = say(client, "json", "How many cups?", response_format={
        "type": "json_schema", "json_schema": {"name": "Tea", "schema": schema}})
    data = json.loads(r.choices[0].message.content or "")
    assert set(data) == {"drink", "cups"} and isinstance(data["cups"], int)
    sent = [x for x in stats(stub)["requests_log"] if (x.get("response_format") or {}).get("type") == "json_schema"]
    assert sent[-1]["response_format"]["json_schema"]["name"] == "Tea"


def test_generation_parameters_pass_through(client: openai.OpenAI, stub: StubURL) -> None:
    r = say(client, "params", "a b c d e f g h", max_tokens=3, temperature=0.1, top_p=0.5, seed=7)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 3
    sent = respond_requests(stub)[-1]
    assert sent["max_completion_tokens"] == 3 and sent["temperature"] == 0.1
    assert sent["top_p"] == 0.5 and sent["seed"] == 7
    r = say(client, "params", "hello", stop=[":"])
    assert r.choices[0].message.content == "Stub reply #2"
    assert respond_requests(stub)[-1]["stop"] == [":"]


# ---- request errors ---------------------------------------------------------------------------


def test_n_greater_than_one_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        say(client, "n", "hi", n=2)
    assert exc.value.status_code == 400 and "n > 1" in exc.value.message
    assert isinstance(exc.value.body, dict) and exc.value.body["param"] == "n"


@pytest.mark.parametrize("body, needle", [
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]}, "messages.0.role"),
    ({"messages": "hello"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": 42}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "maybe"}, "stream"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, "temperature"),
    ({"messages": [{"role": "assistant", "content": "only me"}]}, "user message"),
    ({"messages": [{"role": "user", "content": "  "}]}, "empty"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "text"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "xml"}}, "response_format"),
])
def test_invalid_requests_are_openai_shaped_400(base: str, body: dict[str, Any], needle: str) -> None:
    r = httpx.post(f"{base}/v1/chat/completions", json={"model": "memchat", **body}, headers=AUTH)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert needle in err["message"] or needle == err["param"]


def test_invalid_json_and_bad_thread_id(base: str) -> None:
    r = httpx.post(f"{base}/v1/chat/completions", content=b"{not json", headers={**AUTH, "Content-Type":
                                                                                   "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("invalid request")
    r = httpx.post(f"{base}/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]},
                   headers={**AUTH, "X-Thread-ID": "x" * 300})
    assert r.status_code == 400 and r.json()["error"]["param"] == "thread_id"


def test_message_too_long_is_413(client: openai.OpenAI, base: str) -> None:
    say(client, "long", "short first")
    with pytest.raises(openai.APIStatusError) as exc:
        say(client, "long", "x" * (MAX_CHARS + 1))
    assert exc.value.status_code == 413
    assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "message_too_long"
    assert str(MAX_CHARS) in exc.value.message
    with pytest.raises(openai.APIStatusError) as exc:  # stateless too
        client.chat.completions.create(model="memchat", messages=[{"role": "user", "content": "y" * (MAX_CHARS + 5)}])
    assert exc.value.status_code == 413
    # a body far beyond any acceptable message is refused before it is parsed
    r = httpx.post(f"{base}/v1/chat/completions", content=b"z" * (8 * MAX_CHARS + (1 << 20) + 1),
                   headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert memory(base, "long").json()["turns"] == 1


# ---- backend failures -------------------------------------------------------------------------


def test_backend_error_is_503_and_the_thread_is_unchanged(client: openai.OpenAI, base: str, stub: StubURL) -> None:
    say(client, "fault", "My name is Zhang Wei.")
    before = memory(base, "fault").json()
    assert before["turns"] == 1
    httpx.post(f"{stub.root}/_control", json={"mode": "error"})
    with pytest.raises(openai.InternalServerError) as exc:
        say(client, "fault", "this one fails")
    assert exc.value.status_code == 503
    body = exc.value.body
    assert isinstance(body, dict) and body["code"] == "backend_unavailable"
    assert "LLM backend failed" in body["message"] and "thread is unchanged" in body["message"]
    with pytest.raises(openai.InternalServerError) as exc:  # streamed: the status comes before any output
        list(say(client, "fault", "this one fails too", stream=True))
    assert exc.value.status_code == 503
    with pytest.raises(openai.InternalServerError) as exc:  # stateless
        client.chat.completions.create(model="memchat", messages=[{"role": "user", "content": "no thread"}])
    assert exc.value.status_code == 503 and "thread" not in exc.value.message
    after = memory(base, "fault").json()
    assert after["turns"] == 1 and after["recent_turns"] == before["recent_turns"]
    assert httpx.get(f"{base}/health").json()["status"] == "ok"  # the probe (/v1/models) still answers

    httpx.post(f"{stub.root}/_control", json={"mode": "ok"})
    ok = say(client, "fault", "and now it works")
    assert ok.choices[0].message.content
    assert memory(base, "fault").json()["turns"] == 2


def test_backend_timeout_is_504(client: openai.OpenAI, base: str, stub: StubURL) -> None:
    httpx.post(f"{stub.root}/_control", json={"mode": "hang"})
    try:
        with pytest.raises(openai.APIStatusError) as exc:
            say(client, "slow", "hello?")
    finally:
        httpx.post(f"{stub.root}/_control", json={"mode": "ok"})
    assert exc.value.status_code == 504
    assert isinstance(exc.value.body, dict) and exc.value.body["code"] == "backend_timeout"
    assert memory(base, "slow").status_code == 404  # the failed first turn left nothing behind


def test_event_loop_stays_free_during_a_turn(client: openai.OpenAI, base: str, stub: StubURL) -> None:
    httpx.post(f"{stub.root}/_control", json={"delay": 1.5})
    t = threading.Thread(target=say, args=(client, "busy", "take your time"))
    t.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    assert httpx.get(f"{base}/health").status_code == 200
    assert httpx.get(f"{base}/v1/threads", headers=AUTH).status_code == 200
    assert time.perf_counter() - t0 < 0.5
    t.join(30)
    assert memory(base, "busy").json()["turns"] == 1


# ---- threads API ------------------------------------------------------------------------------


def test_thread_views_summarize_and_forget(client: openai.OpenAI, base: str) -> None:
    for text in ("My name is Lena and my order number is #B-2201.", "I live in Oslo.", "I like green tea."):
        client.chat.completions.create(model="memchat", messages=[{"role": "user", "content": text}],
                                       user="lena", extra_headers=thread("views"))
    mem = memory(base, "views").json()
    assert mem["turns"] == 3 and mem["user_id"] == "lena"
    assert {s["key"]: s["value"] for s in mem["slots"]}["fact:name"] == "Lena"
    ctx = httpx.get(f"{base}/v1/threads/views/context", headers=AUTH).json()
    assert ctx["messages"][-1]["content"].endswith("I like green tea.")
    assert ctx["sections"]["total"] > 0

    summ = httpx.post(f"{base}/v1/threads/views/summarize", headers=AUTH)
    assert summ.status_code == 200 and summ.json()["l2"] is not None

    for path in ("memory", "context"):
        r = httpx.get(f"{base}/v1/threads/nope/{path}", headers=AUTH)
        assert r.status_code == 404 and r.json()["error"]["code"] == "thread_not_found"
    assert httpx.post(f"{base}/v1/threads/nope/summarize", headers=AUTH).status_code == 404

    gone = httpx.delete(f"{base}/v1/threads/views", headers=AUTH).json()
    assert gone["deleted"] is True and gone["object"] == "thread.deleted"
    assert memory(base, "views").status_code == 404
    assert "views" not in [t["id"] for t in httpx.get(f"{base}/v1/threads", headers=AUTH).json()["data"]]


def test_forget_user(client: openai.OpenAI, base: str) -> None:
    for tid in ("u1-a", "u1-b"):
        client.chat.completions.create(model="memchat", messages=[{"role": "user", "content": "I am Ola."}],
                                       user="ola", extra_headers=thread(tid))
    res = httpx.delete(f"{base}/v1/users/ola/memory", headers=AUTH).json()
    assert sorted(res["threads_deleted"]) == ["u1-a", "u1-b"]
    assert memory(base, "u1-a").status_code == 404 and memory(base, "u1-b").status_code == 404


# ---- stateless ----------------------------------------------------------------------------------


def test_stateless_sends_the_history_it_got(client: openai.OpenAI, stub: StubURL, base: str) -> None:
    msgs: list[Any] = [{"role": "system", "content": "You are terse."},
                       {"role": "user", "content": "My dog is Rex."},
                       {"role": "assistant", "content": "Noted."},
                       {"role": "user", "content": [{"type": "text", "text": "Dog's name?"}]}]
    threads_before = httpx.get(f"{base}/v1/threads", headers=AUTH).json()["data"]
    r = client.chat.completions.create(model="memchat", messages=msgs)
    assert r.choices[0].message.content == "Stub reply #1: Dog's name?"
    sent = respond_requests(stub)[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"].startswith("You are terse.") and sent[1]["content"] == "My dog is Rex."
    extra = r.model_dump()["memchat"]
    assert extra["thread_id"] is None and extra["history_turns"] == 1 and extra["summarized_turns"] == 0
    assert httpx.get(f"{base}/v1/threads", headers=AUTH).json()["data"] == threads_before  # nothing stored
    chunks = list(client.chat.completions.create(model="memchat", messages=msgs, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("Stub reply #2")
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0


def test_stateless_overflow_is_summarized_mined_and_searched(tmp_path: Path) -> None:
    settings = Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="fake", data_dir=tmp_path,
                        max_input_tokens=900, generation_reserve=100, l0_turns=3,
                        _env_file=None)  # type: ignore[call-arg]
    eng = Engine(settings, llm=ScriptedChatModel())
    history: list[tuple[str, str]] = [("user", "My name is Zhang Wei and my order number is #A-10057."),
                                      ("assistant", "Thanks, Zhang Wei.")]
    history += [("user", "The parcel was left at the blue door of the warehouse."), ("assistant", "Got it.")]
    for i in range(30):
        history += [("user", f"Filler question {i} about the weather and general small talk today."),
                    ("assistant", f"Filler answer {i}: it is mild and pleasant outside.")]
    p = build_prompt(eng, "You are helpful.", history, "Which door was the parcel left at?")
    assert p.sections["total"] <= settings.prompt_limit
    assert p.summarized_turns > 0 and p.summarized_turns % 3 == 0  # overflow grows in whole blocks
    head = p.messages[0]["content"]
    assert "Zhang Wei" in head and "#A-10057" in head  # slots mined from the overflow, in the head
    assert p.l1 and p.l1[-1]["to_turn"] == p.summarized_turns  # extractive L1 lines, newest kept
    assert f"turns {p.l1[-1]['from_turn']}–{p.summarized_turns}:" in p.messages[1]["content"]
    assert "blue door" in p.messages[-1]["content"]  # BM25 hit from the overflow, in the tail
    assert p.messages[-1]["content"].endswith("Which door was the parcel left at?")
    # the next requests keep the same overflow (a stable prefix) until a whole block moves out
    sizes = []
    for extra in range(1, 7):
        q = build_prompt(eng, "You are helpful.", history + [("user", "ok"), ("assistant", "ok")] * extra, "And?")
        assert q.sections["total"] <= settings.prompt_limit
        sizes.append(q.summarized_turns)
    assert sizes == sorted(sizes) and set(sizes) <= {p.summarized_turns + 3 * j for j in range(4)}
    assert len(set(sizes)) < len(sizes)


def test_bm25_recall_and_pairing() -> None:
    turns = pair_turns([("user", "a"), ("user", "b"), ("assistant", "c"), ("assistant", "d"), ("user", "e")])
    assert [(t.user, t.assistant) for t in turns] == [("a\n\nb", "c"), ("", "d"), ("e", "")]
    hits = bm25_recall(pair_turns([("user", "my passport number is X1"), ("assistant", "ok"),
                                   ("user", "weather is nice"), ("assistant", "yes")]), "passport?", 5)
    assert [h["text"] for h in hits] == ["my passport number is X1"]
    assert bm25_recall([], "x", 5) == [] and bm25_recall(turns, "the", 5) == []


# ---- the long conversation -----------------------------------------------------------------------


def test_sixty_turns_keep_the_slots_in_the_head(base: str, stub: StubURL, mc: MemChat) -> None:
    c = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=60)
    tid = "sixty"
    topics = ["shipping times", "return policy", "gift wrapping", "payment options", "store hours", "warranty"]
    for turn in range(1, 61):
        text = ("My name is Zhang Wei and my order number is #A-10057" if turn == 1
                else f"Question {turn}: tell me about {topics[turn % len(topics)]}.")
        r = c.chat.completions.create(model="memchat", messages=[{"role": "user", "content": text}],
                                      extra_headers=thread(tid))
        assert r.choices[0].message.content
    last = respond_requests(stub)[-1]
    head = last["messages"][0]
    assert head["role"] == "system" and "Zhang Wei" in head["content"] and "#A-10057" in head["content"]
    assert last["messages"][-1]["content"].endswith("Question 60: tell me about shipping times.")
    mem = memory(base, tid).json()
    assert mem["turns"] == 60
    assert mem["l1"] and all({"from_turn", "to_turn", "text"} <= set(line) for line in mem["l1"])
    slots = {s["key"]: s["value"] for s in mem["slots"]}
    assert slots["fact:name"] == "Zhang Wei" and slots["fact:order_number"] == "#A-10057"
    assert len(mem["recent_turns"]) <= 2 * mc.settings.l0_turns  # the checkpoint stays bounded


# ---- startup with a dead backend -------------------------------------------------------------------


def test_unreachable_backend_starts_degraded(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    settings = Settings(llm_base_url=dead, llm_model="m", data_dir=tmp_path, llm_max_retries=0,
                        _env_file=None)  # type: ignore[call-arg]
    with serve_app(create_app(settings)) as url:
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "degraded" and "unreachable" in health["error"]
        r = httpx.post(f"{url}/v1/chat/completions", headers={"X-Thread-ID": "t"},
                       json={"model": "memchat", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503
        err = r.json()["error"]
        assert err["code"] == "backend_unavailable" and err["message"].startswith("LLM backend unavailable")
        assert dead in err["message"]
        assert httpx.get(f"{url}/v1/threads").status_code == 200  # the rest of the API works


def test_injected_fake_llm_without_probe(tmp_path: Path) -> None:
    settings = Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="fake", data_dir=tmp_path,
                        _env_file=None)  # type: ignore[call-arg]
    fake = ScriptedChatModel(replies=["Hello from the fake."])
    mc = MemChat(engine=Engine(settings, llm=fake))
    with serve_app(create_app(settings, mc, probe=False)) as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        r = say(c, "fake", "hi")
        assert r.choices[0].message.content == "Hello from the fake."
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "ok" and "backend" not in health  # no probe: nothing known of the backend
        assert all(s["ok"] for s in health["stores"].values())


# ---- memchat serve ----------------------------------------------------------------------------------


def test_memchat_serve_command_logs_the_backend(stub: StubURL, tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, MEMCHAT_LLM_BASE_URL=str(stub), MEMCHAT_LLM_MODEL=STUB_MODEL,
               MEMCHAT_DATA_DIR=str(tmp_path), HF_HUB_OFFLINE="1")
    env.pop("MEMCHAT_API_KEY", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "memchat.cli", "serve", "--port", str(port)], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()["status"] == "ok":
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    text = log.read_text()
    assert f"LLM backend: model={STUB_MODEL} context_length=32768 kind=sglang" in text
