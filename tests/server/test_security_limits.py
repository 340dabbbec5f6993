"""Input limits: oversized messages and bodies (413), unknown roles and wrong types (400), invalid Unicode,
and what must work: emoji, mixed scripts, 50K-character lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.support.serving import StubURL, serve_memchat
from tests.support.sglang_stub import message_part

KEY = "sk-limits"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_CHARS = 60_000
BODY_LIMIT = 8 * MAX_CHARS + (1 << 20)
MIXED = "我叫李明 and my order number is #A-77 — اسمي أحمد 👋🏽🎉 Ünïcödé ✓ 𝔘𝔫𝔦 ‮RTL‬ ok"


@pytest.fixture(scope="module")
def base(stub: StubURL, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_memchat(stub, tmp_path_factory.mktemp("limits"), api_key=KEY, max_request_chars=MAX_CHARS,
                       llm_max_retries=0) as url:
        yield url


def chat(base: str, body: Any, tid: str | None = None, **kw: Any) -> httpx.Response:
    headers = {**AUTH, **({"X-Thread-ID": tid, "X-User-ID": f"u-{tid}"} if tid else {})}
    if isinstance(body, (dict, list)):
        return httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=120, **kw)
    return httpx.post(f"{base}/v1/chat/completions", content=body, timeout=120,
                      headers={**headers, "Content-Type": "application/json"}, **kw)


def user(text: Any) -> dict[str, Any]:
    return {"model": "memchat", "messages": [{"role": "user", "content": text}]}


def error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text[:300]
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"
    return err  # type: ignore[no-any-return]


def test_oversized_messages_and_bodies_are_refused(base: str) -> None:
    err = error(chat(base, user("x" * (MAX_CHARS + 1)), "big"), 413)
    assert err["code"] == "message_too_long" and str(MAX_CHARS) in err["message"]
    assert err["param"] == "messages.0.content"
    err = error(chat(base, {"model": "m", "messages": [{"role": "system", "content": "s" * (MAX_CHARS + 1)},
                                                      {"role": "user", "content": "hi"}]}), 413)
    assert err["param"] == "messages.0.content"
    # the LangServe route has the same limit
    r = httpx.post(f"{base}/graph/invoke", json={"input": {"messages": [["user", "y" * (MAX_CHARS + 1)]]}},
                   headers={**AUTH, "X-Thread-ID": "big-graph"}, timeout=60)
    assert error(r, 413)["code"] == "message_too_long"
    # bodies beyond any acceptable message: refused by Content-Length before reading ...
    r = chat(base, b"z" * (BODY_LIMIT + 1))
    assert error(r, 413)["code"] == "request_too_large"

    # ... and cut off while reading when they come without one (chunked)
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "memchat", "messages": [{"role": "user", "content": "'
        for _ in range(BODY_LIMIT // 65536 + 2):
            yield b"a" * 65536
        yield b'"}]}'

    r = httpx.post(f"{base}/v1/chat/completions", content=chunks(), headers={**AUTH, "Content-Type": "application/json"},
                   timeout=60)
    assert "content-length" not in r.request.headers
    assert error(r, 413)["code"] == "request_too_large"
    assert httpx.get(f"{base}/v1/threads/big/memory", headers=AUTH).status_code == 404  # nothing was stored


@pytest.mark.parametrize("body, param", [
    (user("hi") | {"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    (user("hi") | {"messages": [{"role": "tool", "content": "hi", "tool_call_id": "x"}]}, "messages.0.role"),
    (user("hi") | {"messages": [{"role": "function", "content": "hi"}]}, "messages.0.role"),
    (user("hi") | {"messages": [{"content": "no role"}]}, "messages.0.role"),
    (user(123), "messages.0.content"),
    (user({"text": "an object"}), "messages.0.content"),
    (user([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]), "messages.0.content"),
    (user("hi") | {"messages": "hi"}, "messages"),
    (user("hi") | {"messages": []}, "messages"),
    ({"model": "memchat"}, "messages"),
    (user("hi") | {"temperature": "hot"}, "temperature"),
    (user("hi") | {"temperature": 9}, "temperature"),
    (user("hi") | {"max_tokens": 0}, "max_tokens"),
    (user("hi") | {"stream": [1]}, "stream"),
    (user("hi") | {"n": 2}, "n"),
    (user("hi") | {"response_format": {"type": "yaml"}}, "response_format.type"),
    (user("   "), "messages.0.content"),
    ({"model": "memchat", "messages": [{"role": "assistant", "content": "only me"}]}, "messages"),
    ([1, 2, 3], None),
])
def test_unknown_roles_and_wrong_types_are_400(base: str, body: Any, param: str | None) -> None:
    err = error(chat(base, body), 400)
    if param is not None:
        assert err["param"] == param or (err["param"] or "").startswith(param), err


def test_invalid_json_and_unicode_are_400(base: str) -> None:
    assert error(chat(base, b'{"model": "memchat", "messages": [{"role": "user", "content": "hi"}'), 400)
    assert error(chat(base, b"\xff\xfe not utf-8"), 400)
    # JSON may carry a lone surrogate; it cannot be stored or tokenized
    err = error(chat(base, b'{"messages": [{"role": "user", "content": "bad \\ud800 text"}]}', "surrogate"), 400)
    assert err["code"] == "invalid_text" and err["param"] == "messages.0.content"
    err = error(chat(base, b'{"model": "\\udfff", "messages": [{"role": "user", "content": "hi"}]}'), 400)
    assert err["param"] == "model"
    for bad_id in ("a/b", "x" * 300, "tab\there"):
        r = httpx.post(f"{base}/v1/chat/completions", json=user("hi"), headers={**AUTH, "X-Thread-ID": bad_id})
        assert error(r, 400)["param"] == "thread_id"
    r = httpx.get(f"{base}/v1/threads/{'x' * 300}/memory", headers=AUTH)
    assert r.status_code in (400, 404)
    r = httpx.post(f"{base}/graph/invoke", json={"input": {"messages": [["user", "hi"]]}},
                   headers={**AUTH, "X-Thread-ID": "a/b"})
    assert r.status_code == 400
    for route in ("invoke", "stream", "stream_log", "stream_events"):  # refused before any streaming starts
        r = httpx.post(f"{base}/graph/{route}", json={"input": {"messages": []}}, headers={**AUTH, "X-Thread-ID": "g"})
        assert r.status_code == 400 and "non-empty user message" in r.json()["error"]["message"], route
    r = httpx.post(f"{base}/graph/batch", json={"inputs": [{"messages": [["user", "ok"]]}, {"messages": [["ai", "x"]]}]},
                   headers={**AUTH, "X-Thread-ID": "g"})
    assert r.status_code == 400


def test_emoji_and_mixed_scripts_round_trip(base: str, stub: StubURL) -> None:
    r = chat(base, user(MIXED) | {"user": "li"}, "mixed")
    assert r.status_code == 200, r.text
    reply = r.json()["choices"][0]["message"]["content"]
    assert reply == f"Stub reply #{_last_count(stub)}: {MIXED[:60]}"  # the stub echoes what it received
    mem = httpx.get(f"{base}/v1/threads/mixed/memory", headers=AUTH).json()
    assert mem["recent_turns"][-1]["user"] == MIXED and mem["recent_turns"][-1]["assistant"] == reply
    assert mem["memories"]["thread"] == 2
    ctx = httpx.get(f"{base}/v1/threads/mixed/context", headers=AUTH).json()
    assert ctx["messages"][-1]["content"].endswith(MIXED)
    # streamed (another user: nothing to recall in front of the message): the chunks join back exactly
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=user(MIXED[::-1]) | {"stream": True},
                      headers={**AUTH, "X-Thread-ID": "mixed-2", "X-User-ID": "ahmed"}, timeout=60) as s:
        assert s.status_code == 200
        text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                       for line in s.iter_lines() if line.startswith("data: {") and '"choices": [{' in line)
    assert text.endswith(MIXED[::-1][:60].strip()) and "\ufffd" not in text
    mem = httpx.get(f"{base}/v1/threads/mixed-2/memory", headers=AUTH).json()
    assert mem["recent_turns"] == [{"turn": 1, "user": MIXED[::-1], "assistant": text}]
    # mixed-script thread and user ids are fine too (in the body: HTTP headers are ASCII)
    tid = "线程-خيط-🧵"
    assert chat(base, user("hello") | {"thread_id": tid, "user": "李明"}).status_code == 200
    mem = httpx.get(f"{base}/v1/threads/{quote(tid)}/memory", headers=AUTH).json()
    assert mem["thread_id"] == tid and mem["user_id"] == "李明" and mem["turns"] == 1


def _last_count(stub: StubURL) -> int:
    return int(httpx.get(f"{stub.root}/_stats").json()["requests"])


def test_fifty_thousand_character_lines_work(base: str, stub: StubURL) -> None:
    line = ("memchat keeps long lines 中文字符 العربية 🎉 " * 2000)[:50_000]
    assert len(line) == 50_000 and "\n" not in line and len(line) < MAX_CHARS
    r = chat(base, user(line), "long")
    assert r.status_code == 200, r.text[:300]
    assert r.json()["choices"][0]["message"]["content"].endswith(line[:60])
    mem = httpx.get(f"{base}/v1/threads/long/memory", headers=AUTH).json()
    assert mem["turns"] == 1
    kept = mem["recent_turns"][0]["user"]  # cut to MEMCHAT_MAX_MESSAGE_TOKENS with a visible marker
    assert line.startswith(kept.rsplit(" [", 1)[0]) and len(kept) > 10_000
    assert mem["counters"].get("truncated_messages") == 1
    sent = httpx.get(f"{stub.root}/_stats").json()["last_request"]["messages"][-1]["content"]
    assert message_part(sent).startswith(line[:1000])  # after the turn's date
    # stateless and streamed, then the thread goes on
    assert chat(base, user(line)).status_code == 200
    r = chat(base, user(line) | {"stream": True}, "long")
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    assert chat(base, user("and a short one"), "long").json()["memchat"]["turn"] == 3
