"""Privacy of users through the HTTP API (issue 17, items 1, 2 and 4).

* requests without ``user`` get the thread's own profile, never a shared "anonymous" one;
  ``MEMCHAT_REQUIRE_USER`` refuses them (400) on the OpenAI and the LangServe routes;
* ``DELETE /v1/users/{user}/memory`` finds every thread of the user (no 1,000-thread window), threads
  shared with others (deleted whole), and wins over a turn of the user that is running;
* user and thread ids with dots, e-mails, CJK and emoji work on every route, and a user id that is a
  prefix of another (``bob`` / ``bob.smith``) never reads or forgets the other's memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from langgraph.store.base import PutOp

from memchat.backends.registry import ThreadRegistry
from memchat.chat import MemChat
from memchat.memory.namespaces import META_NS, THREADS_NS, decode_label, encode_label
from memchat.server.app import create_app
from memchat.settings import Settings
from tests.support.serving import STUB_MODEL, StubURL, serve_app, serve_memchat


@pytest.fixture(scope="module")
def mc(stub: StubURL, tmp_path_factory: pytest.TempPathFactory) -> MemChat:
    settings = Settings(llm_base_url=stub, llm_model=STUB_MODEL, data_dir=tmp_path_factory.mktemp("privacy"),
                        llm_max_retries=0, _env_file=None)  # type: ignore[call-arg]
    return MemChat(settings)


@pytest.fixture(scope="module")
def base(mc: MemChat) -> Iterator[str]:
    with serve_app(create_app(mc.settings, mc, probe=False)) as url:
        yield url


def chat(base: str, thread: str, text: str, user: str | None = None, **headers: str) -> httpx.Response:
    body: dict[str, Any] = {"model": "memchat", "messages": [{"role": "user", "content": text}]}
    if user is not None:
        body["user"] = user
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60,
                      headers={"X-Thread-ID": thread, **headers} if thread else headers)


def say(base: str, thread: str, text: str, user: str | None = None) -> None:
    r = chat(base, thread, text, user)
    assert r.status_code == 200, r.text


def prompt(base: str, thread: str) -> str:
    r = httpx.get(f"{base}/v1/threads/{quote(thread)}/context", timeout=30)
    assert r.status_code == 200, r.text
    return "\n".join(m["content"] for m in r.json()["messages"])


def listed(base: str, user: str) -> set[str]:
    r = httpx.get(f"{base}/v1/threads", params={"user": user}, timeout=60)
    assert r.status_code == 200, r.text
    return {row["id"] for row in r.json()["data"]}


def forget(base: str, user: str) -> dict[str, Any]:
    r = httpx.delete(f"{base}/v1/users/{quote(user, safe='')}/memory", timeout=120)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def gone(base: str, thread: str) -> bool:
    return httpx.get(f"{base}/v1/threads/{quote(thread)}/memory", timeout=30).status_code == 404


# ---- 1. no shared anonymous profile --------------------------------------------------------------------


def test_requests_without_user_do_not_share_a_profile(base: str) -> None:
    secrets = ["Alice Anon", "#A-7777", "shellfish", "张三", "ZS0001", "花生"]
    say(base, "anon-a", "My name is Alice Anon, my order number is #A-7777 and I am allergic to shellfish.")
    say(base, "anon-zh", "我叫张三。我的订单号是 ZS0001。我对花生过敏。")
    say(base, "anon-b", "What do you know about me? My name, my order, my allergy?")
    leaked = [s for s in secrets if s in prompt(base, "anon-b")]
    assert leaked == []  # a stranger's new thread gets none of the anonymous clients' facts
    mem = httpx.get(f"{base}/v1/threads/anon-b/memory", timeout=30).json()
    assert mem["slots"] == [] and mem["user_id"] is None and mem["retrieved"] == []
    say(base, "anon-a", "Remind me of my order number.")  # positive control: the thread keeps its own
    own = prompt(base, "anon-a")
    assert "Alice Anon" in own and "#A-7777" in own and "张三" not in own
    assert httpx.delete(f"{base}/v1/threads/anon-a", timeout=60).json()["memories_removed"] >= 3


def test_require_user_refuses_requests_without_one(stub: StubURL, tmp_path: Path) -> None:
    with serve_memchat(stub, tmp_path / "data", require_user=True) as url:
        for thread in ("req-t", ""):  # a thread turn and a stateless call
            r = chat(url, thread, "Hello")
            assert r.status_code == 400 and r.json()["error"]["code"] == "user_required", r.text
            assert "MEMCHAT_REQUIRE_USER" in r.json()["error"]["message"]
        graph_in = {"input": {"messages": [{"role": "user", "content": "Hello"}]}}
        for path, body in (("/graph/invoke", graph_in), ("/graph/stream", graph_in),
                           ("/graph/batch", {"inputs": [graph_in["input"]] * 2,
                                             "config": [{"configurable": {"user_id": "u1"}}, {}]})):
            r = httpx.post(url + path, json=body, headers={"X-Thread-ID": "req-g"}, timeout=60)
            assert r.status_code == 400 and "user id is required" in r.text, (path, r.text)
        assert httpx.get(f"{url}/v1/threads", timeout=30).json()["data"] == []  # nothing ran
        assert chat(url, "req-t", "Hello", "u1").status_code == 200
        assert chat(url, "req-t", "Hello", **{"X-User-ID": "u1"}).status_code == 200
        r = httpx.post(url + "/graph/invoke", json=graph_in, headers={"X-Thread-ID": "req-g", "X-User-ID": "u1"},
                       timeout=60)
        assert r.status_code == 200, r.text


# ---- 2. forgetting a user leaves nothing behind ----------------------------------------------------------


def test_forget_deletes_threads_shared_with_other_users(base: str) -> None:
    say(base, "sh-own", "My name is Alice Forget, my order number is #F-1001.", "alice-s")
    say(base, "sh-shared", "My order number is #F-2002 and I am allergic to peanuts.", "alice-s")
    say(base, "sh-shared", "Hi, my name is Bob Keep.", "bob-s")  # bob speaks last in the shared thread
    say(base, "sh-bob", "My name is Bob Keep and I live in Oslo.", "bob-s")
    assert listed(base, "alice-s") == {"sh-own", "sh-shared"} and listed(base, "bob-s") == {"sh-shared", "sh-bob"}
    rows = {r["id"]: r for r in httpx.get(f"{base}/v1/threads", timeout=30).json()["data"]}
    assert rows["sh-shared"]["users"] == ["alice-s", "bob-s"] and rows["sh-shared"]["user_id"] == "bob-s"

    res = forget(base, "alice-s")
    assert sorted(res["threads_deleted"]) == ["sh-own", "sh-shared"] and res["threads_removed"] == 2
    assert res["shared_threads_deleted"] == ["sh-shared"]  # deleted whole: it holds alice's words
    assert res["memories_removed"] >= 6 and res["profile_slots_removed"] >= 3 and res["audit_entries_removed"] >= 3
    assert res["slots_removed"] >= res["profile_slots_removed"] + 3
    assert gone(base, "sh-own") and gone(base, "sh-shared")
    assert listed(base, "alice-s") == set() and listed(base, "bob-s") == {"sh-bob"}
    say(base, "sh-new", "What is my name and my order number? Am I allergic?", "alice-s")
    assert not [s for s in ("Alice Forget", "#F-1001", "#F-2002", "peanuts") if s in prompt(base, "sh-new")]
    say(base, "sh-bob", "Where do I live?", "bob-s")  # bob keeps his own thread and profile
    assert "Bob Keep" in prompt(base, "sh-bob") and "Oslo" in prompt(base, "sh-bob")


def test_forget_and_thread_list_have_no_window(base: str, mc: MemChat) -> None:
    say(base, "win-old", "My name is Wanda Window, my order number is #W-4004.", "wanda-w")
    time.sleep(1.1)  # the store orders by update time (whole seconds): the fillers are newer
    mc.store.batch([PutOp(THREADS_NS, f"filler-{i}", {"user_id": f"other-{i}", "turns": 1,  # type: ignore[union-attr]
                                                      "updated": time.time()}) for i in range(1000)])
    assert listed(base, "wanda-w") == {"win-old"}
    assert len(httpx.get(f"{base}/v1/threads", timeout=60).json()["data"]) >= 1001
    res = forget(base, "wanda-w")
    assert res["threads_deleted"] == ["win-old"] and res["profile_slots_removed"] == 2
    assert gone(base, "win-old") and listed(base, "wanda-w") == set()
    assert mc.audit(user_id="wanda-w") == []


def test_forget_wins_over_a_running_turn(base: str, stub: StubURL) -> None:
    result: dict[str, Any] = {}

    def running() -> None:
        result["r"] = chat(base, "race-1", "My name is Carol Race, my order number is #R-3003.", "carol-r")

    stub.state.delay = 2.0
    try:
        before = stub.state.requests
        t = threading.Thread(target=running)
        t.start()
        deadline = time.monotonic() + 30
        while stub.state.requests == before and time.monotonic() < deadline:
            time.sleep(0.02)  # until the turn waits for its (slow) reply
        res = forget(base, "carol-r")
        t.join(30)
    finally:
        stub.state.delay = 0.0
    assert result["r"].status_code == 200, result["r"].text  # the running turn finished first ...
    assert res["threads_deleted"] == ["race-1"] and res["profile_slots_removed"] >= 2  # ... and was forgotten
    assert gone(base, "race-1") and listed(base, "carol-r") == set()
    say(base, "race-2", "What is my name?", "carol-r")
    assert "Carol Race" not in prompt(base, "race-2") and "#R-3003" not in prompt(base, "race-2")


def test_threads_registered_before_the_user_index_are_found(mc: MemChat) -> None:
    mc.store.put(THREADS_NS, "legacy-t", {"user_id": "lee.gacy", "turns": 1, "updated": time.time()})  # type: ignore[union-attr]
    mc.store.delete(META_NS, "registry")  # type: ignore[union-attr]
    ThreadRegistry(mc.store)  # a restart indexes the old rows once
    assert [r["id"] for r in mc.threads("lee.gacy")] == ["legacy-t"]
    assert mc.delete_user("lee.gacy")["threads_deleted"] == ["legacy-t"] and mc.threads("lee.gacy") == []


def test_turns_of_a_user_being_forgotten_are_refused(base: str, mc: MemChat) -> None:
    with mc.registry.forgetting("dave-busy", ttl=60):
        r = chat(base, "busy-1", "Hello", "dave-busy")
        assert r.status_code == 409 and "being forgotten" in r.json()["error"]["message"], r.text
        assert chat(base, "busy-2", "Hello", "erin-free").status_code == 200  # other users are served
    assert gone(base, "busy-1")
    say(base, "busy-1", "Hello again", "dave-busy")  # after the forget the user is served again


# ---- 4. any id the API accepts works everywhere -----------------------------------------------------------


IDS = ["john.doe@example.com", "bob.smith", "bob", "李.明", "😀.🚀", "100%2E.sure"]


def test_labels_encode_reversibly() -> None:
    for value in IDS + ["plain", "a%b", "%2E", "..", "ünïcode"]:
        label = encode_label(value)
        assert "." not in label and decode_label(label) == value
    assert encode_label("plain-user_1") == "plain-user_1" and encode_label("李明🙂") == "李明🙂"


def test_ids_with_dots_cjk_and_emoji_work_on_every_route(base: str, mc: MemChat) -> None:
    for i, uid in enumerate(IDS):
        say(base, f"id.{i}.a", f"My name is Person{i} Dotted, my order number is #D-{i}00.", uid)
        mem = httpx.get(f"{base}/v1/threads/{quote(f'id.{i}.a')}/memory", timeout=30).json()
        assert mem["user_id"] == uid and {s["key"] for s in mem["slots"]} >= {"fact:name", "fact:order_number"}
    for i, uid in enumerate(IDS):  # a new thread gets the user's own profile, and no one else's
        say(base, f"id.{i}.b", "Who am I?", uid)
        text = prompt(base, f"id.{i}.b")
        assert f"Person{i} Dotted" in text, (uid, text)
        assert not [j for j in range(len(IDS)) if j != i and f"Person{j} Dotted" in text], (uid, text)
        assert listed(base, uid) == {f"id.{i}.a", f"id.{i}.b"}
        assert {r["user_id"] for r in mc.audit(user_id=uid)} == {uid}
    res = forget(base, "bob")  # "bob" is a prefix of "bob.smith": only bob's memory goes
    assert sorted(res["threads_deleted"]) == ["id.2.a", "id.2.b"] and res["profile_slots_removed"] == 2
    say(base, "id.1.c", "Who am I?", "bob.smith")
    assert "Person1 Dotted" in prompt(base, "id.1.c") and mc.audit(user_id="bob.smith")
    for i, uid in enumerate(IDS):
        if uid == "bob":
            continue
        res = forget(base, uid)
        assert f"id.{i}.a" in res["threads_deleted"] and res["profile_slots_removed"] == 2, (uid, res)
        assert res["memories_removed"] > 0 and gone(base, f"id.{i}.b") and listed(base, uid) == set()
        assert mc.audit(user_id=uid) == []
