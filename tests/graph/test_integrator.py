"""The integrator's path, through the openai SDK: stateless callers with ``user`` get long-term memory,
history import into new threads, per-request context, summaries computed off the hot path."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from memchat.backends.engine import Engine
from memchat.backends.llm import BackendError
from memchat.backends.precompute import cache_for
from memchat.chat import MemChat
from memchat.importer import import_file
from memchat.server.app import create_app
from memchat.server.user_memory import load_profile
from memchat.settings import Settings
from tests.support.fakes import ScriptedChatModel
from tests.support.serving import STUB_MODEL, StubURL, serve_app


@pytest.fixture(scope="module")
def mc(stub: StubURL, tmp_path_factory: pytest.TempPathFactory) -> MemChat:
    """A small prompt budget, so that a 40-turn history overflows the verbatim window."""
    settings = Settings(llm_base_url=stub, llm_model=STUB_MODEL, data_dir=tmp_path_factory.mktemp("integrator"),
                        max_input_tokens=1400, generation_reserve=200, memory_tokens=300, llm_max_retries=0,
                        _env_file=None)  # type: ignore[call-arg]
    return MemChat(settings)


@pytest.fixture(scope="module")
def base(mc: MemChat) -> Iterator[str]:
    with serve_app(create_app(mc.settings, mc)) as url:
        yield url


@pytest.fixture()
def client(base: str, stub: StubURL) -> openai.OpenAI:
    httpx.post(f"{stub.root}/_control", json={"mode": "ok", "delay": 0, "reset": True})
    return openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=120)


def requests_log(stub: StubURL) -> list[dict[str, Any]]:
    return httpx.get(f"{stub.root}/_stats").json()["requests_log"]  # type: ignore[no-any-return]


def is_summary(r: dict[str, Any]) -> bool:
    return (r.get("response_format") or {}).get("type") == "json_schema"


def prompt_text(r: dict[str, Any]) -> str:
    return "\n".join(str(m["content"]) for m in r["messages"])


def script(i: int) -> str:
    """Turn ``i`` (1-based) of a customer's conversation: three facts, one corrected, among filler."""
    return {1: "Hi, my name is Zhang Wei.", 3: "I live in Hangzhou.", 6: "My order number is #A-10057.",
            9: "The parcel was left at the blue door of the warehouse.",
            15: "Correction: I live in Suzhou, not Hangzhou."}.get(
        i, f"Question {i}: can delivery slot {i} be moved to a later hour of the afternoon?")


def test_stateless_user_gets_long_term_memory(client: openai.OpenAI, stub: StubURL, mc: MemChat) -> None:
    user = "cust-7"
    history: list[dict[str, str]] = []
    for i in range(1, 41):
        msg = script(i) if i < 40 else "Please confirm my details before I go."
        r = client.chat.completions.create(model="memchat", user=user, messages=[*history, {"role": "user", "content": msg}])
        history += [{"role": "user", "content": msg}, {"role": "assistant", "content": r.choices[0].message.content or ""}]
    info = r.model_dump()["memchat"]
    assert info["summarized_turns"] >= 10 and info["user"] == user  # the early turns left the verbatim window
    heads = [x["messages"][0]["content"] for x in requests_log(stub) if not is_summary(x)]
    changes = sum(a != b for a, b in zip(heads, heads[1:]))
    assert len(heads) == 40 and changes <= 40 // 5  # the head changes only when the overflow grows by a block
    sent = [x for x in requests_log(stub) if not is_summary(x)][-1]
    assert all(m["content"] != script(1) for m in sent["messages"])  # turn 1 is not verbatim: from memory
    last = prompt_text(sent)
    assert "Zhang Wei" in last and "Suzhou" in last and "A-10057" in last

    # the next day: a new session (new history), the same user
    r = client.chat.completions.create(model="memchat", user=user, messages=[
        {"role": "user", "content": "Hello again. Which door was my parcel left at?"}])
    new = prompt_text(requests_log(stub)[-1])
    assert "Zhang Wei" in new and "Suzhou" in new and "A-10057" in new and "blue door" in new
    assert load_profile(mc, user)["fact:location"]["value"] == "Suzhou"

    # nothing stored twice: the history was re-sent 40 times, every message is stored once
    got = mc.engine.memory.col.get(where={"user_id": user}, include=["documents", "metadatas"])
    turns = [(m["speaker"], d) for d, m in zip(got["documents"], got["metadatas"]) if m["kind"] == "turn"]
    assert len(turns) == len(set(turns)) == 2 * 41


def conversation(n: int) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for i in range(1, n + 1):
        out += [{"role": "user", "content": script(i)}, {"role": "assistant", "content": f"Noted ({i})."}]
    return out


def test_history_import_into_a_new_thread(client: openai.OpenAI, stub: StubURL, base: str) -> None:
    msgs = [*conversation(60), {"role": "user", "content": "Which door was the parcel left at?"}]
    head = {"X-Thread-ID": "imported-1", "X-User-ID": "imp-user"}
    raw = client.chat.completions.with_raw_response.create(model="memchat", messages=msgs, extra_headers=head)
    assert raw.headers["X-Memchat-Imported"] == "60"
    last = prompt_text([x for x in requests_log(stub) if not is_summary(x)][-1])
    assert "blue door" in last and "Zhang Wei" in last and "Suzhou" in last and "A-10057" in last
    mem = httpx.get(f"{base}/v1/threads/imported-1/memory").json()
    assert mem["turns"] == 61 and mem["l2"] and 5 <= len(mem["recent_turns"]) <= 10
    assert {s["key"]: s["value"] for s in mem["slots"]}["fact:location"] == "Suzhou"

    # the same history again, now that the thread exists: refused, not dropped
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="memchat", messages=msgs, extra_headers=head)
    assert "already has turns" in str(exc.value) and exc.value.code == "history_on_existing_thread"
    assert httpx.get(f"{base}/v1/threads/imported-1/memory").json()["turns"] == 61

    # a retry of the importing request with its Idempotency-Key replays the stored answer instead of a 400
    keyed = {"X-Thread-ID": "imported-keyed", "Idempotency-Key": "import-retry-1"}
    first = client.chat.completions.with_raw_response.create(model="memchat", messages=msgs, extra_headers=keyed)
    again = client.chat.completions.with_raw_response.create(model="memchat", messages=msgs, extra_headers=keyed)
    assert again.parse().id == first.parse().id and again.parse().choices[0].message.content == \
        first.parse().choices[0].message.content
    assert httpx.get(f"{base}/v1/threads/imported-keyed/memory").json()["turns"] == 61

    # a first turn that fails takes its import with it: the retry imports again
    short = [*conversation(6), {"role": "user", "content": "And my order number?"}]
    httpx.post(f"{stub.root}/_control", json={"mode": "error"})
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="memchat", messages=short, extra_headers={"X-Thread-ID": "imported-2"})
    assert httpx.get(f"{base}/v1/threads/imported-2/memory").status_code == 404
    httpx.post(f"{stub.root}/_control", json={"mode": "ok"})
    raw = client.chat.completions.with_raw_response.create(model="memchat", messages=short,
                                                           extra_headers={"X-Thread-ID": "imported-2"})
    assert raw.headers["X-Memchat-Imported"] == "6"


def test_import_file(mc: MemChat, tmp_path: Path) -> None:
    rows = [{"thread_id": "bulk-1", "user": "bulk", "messages": conversation(12)},
            {"thread_id": "bulk-2", "messages": [{"role": "system", "content": "Be brief."}, *conversation(3)]}]
    f = tmp_path / "conv.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert import_file(mc, str(f), llm=False, progress=False) == {"threads": 2, "turns": 15, "skipped": 0}
    assert import_file(mc, str(f), llm=False, progress=False)["skipped"] == 2  # idempotent
    assert mc.memory("bulk-1")["turns"] == 12 and mc.memory("bulk-2")["persona"] == "Be brief."


def test_per_request_context_reaches_the_tail_only(client: openai.OpenAI, stub: StubURL, base: str) -> None:
    head = {"X-Thread-ID": "ctx-1", "X-User-ID": "ctx-user"}
    persona = {"role": "system", "content": "You are a support agent."}
    client.chat.completions.create(model="memchat", extra_headers=head,
                                   messages=[persona, {"role": "user", "content": "Where is my parcel?"}])
    ctx = "Current time 2026-12-01 10:00 UTC. Order #B-2 status: out for delivery."
    client.chat.completions.create(model="memchat", extra_headers=head, messages=[
        persona, {"role": "user", "content": "And now?"}, {"role": "system", "content": ctx}])
    client.chat.completions.create(model="memchat", extra_headers=head, extra_body={"memchat": {"context": "Tuesday."}},
                                   messages=[{"role": "user", "content": "Thanks."}])
    one, two, three = [r["messages"] for r in requests_log(stub) if not is_summary(r)][-3:]
    assert one[0] == two[0] == three[0]  # the cached head is byte-identical
    assert ctx in two[-1]["content"] and all(ctx not in m["content"] for m in two[:-1])
    assert all(ctx not in m["content"] for m in three) and "Tuesday." in three[-1]["content"]
    assert httpx.get(f"{base}/v1/threads/ctx-1/memory").json()["persona"] == "You are a support agent."


def test_compaction_makes_one_model_call_before_the_reply(client: openai.OpenAI, stub: StubURL, base: str) -> None:
    head = {"X-Thread-ID": "compact-1", "X-User-ID": "compact-user"}
    for i in range(1, 11):
        client.chat.completions.create(model="memchat", extra_headers=head,
                                       messages=[{"role": "user", "content": f"Message {i} about the parcel."}])
    deadline = time.monotonic() + 15
    while not any(is_summary(r) for r in requests_log(stub)) and time.monotonic() < deadline:
        time.sleep(0.05)  # the L1 summary for turns 1-5 runs after turn 10's reply
    before = len(requests_log(stub))
    stream = client.chat.completions.create(model="memchat", extra_headers=head, stream=True,
                                            messages=[{"role": "user", "content": "Message 11."}])
    first = next(c for c in stream if c.choices and c.choices[0].delta.content)
    calls = requests_log(stub)[before:]  # the model calls made before the reply's first token
    assert first and len(calls) == 1 and not is_summary(calls[0])
    list(stream)
    mem = httpx.get(f"{base}/v1/threads/compact-1/memory").json()
    assert [(b["from_turn"], b["to_turn"]) for b in mem["l1"]] == [(1, 5)] and mem["turns"] == 11


def test_background_summary_fallback_and_rollback(memchat: MemChat, fake_llm: ScriptedChatModel) -> None:
    """Off the hot path with the same failure handling; a rolled-back turn leaves no trace of it."""
    fake_llm.fail_kinds = {"summary"}
    for i in range(1, 11):
        memchat.turn("bg", f"Message {i} about the tides.")
    cache_for(memchat.engine).drain()  # the L1 summary of turns 1-5 ran (and failed) after turn 10
    before = memchat.state("bg")
    fake_llm.fail_kinds = {"summary", "respond"}
    with pytest.raises(BackendError):
        memchat.turn("bg", "Message 11.")
    assert memchat.state("bg") == before  # rolled back: no L1 line, nothing folded
    fake_llm.fail_kinds = {"summary"}
    memchat.turn("bg", "Message 11.")  # the failed try used the result: recomputed in the background
    assert memchat.state("bg")["l1"] == []  # ... and folded on a later turn, not waited for
    cache_for(memchat.engine).drain()
    n = len(fake_llm.calls)
    memchat.turn("bg", "Message 12.")
    assert fake_llm.kinds()[n:] == ["respond"]  # the compaction turn makes one model call
    st = memchat.state("bg")
    assert [(b["from_turn"], b["to_turn"], b["llm"]) for b in st["l1"]] == [(1, 5, False)] and st["turn"] == 12
    assert st["l1"][0]["text"].startswith("Message 1 about the tides.")  # the extractive fallback stands
    assert st["counters"]["summary_failures"] == 1


class GatedSummaries(ScriptedChatModel):
    """Summary calls wait until the test opens the gate (a slow summary)."""

    def _text(self, messages: list[Any], kwargs: dict[str, Any]) -> str:
        if self._kind(kwargs) == "summary":
            GATE.wait(30)
        return super()._text(messages, kwargs)


GATE = threading.Event()


def test_a_summary_still_running_is_folded_later_not_waited_for(settings: Settings) -> None:
    llm = GatedSummaries()
    mc = MemChat(engine=Engine(settings, llm=llm))
    for i in range(1, 11):
        mc.turn("slow", f"Message {i} about the tides.")
    t0 = time.monotonic()
    mc.turn("slow", "Message 11.")  # its summary is still running: the turn does not wait for it
    assert time.monotonic() - t0 < 10 and mc.state("slow")["l1"] == [] and llm.kinds()[-1] == "respond"
    GATE.set()
    cache_for(mc.engine).drain()
    mc.turn("slow", "Message 12.")
    assert [(b["from_turn"], b["to_turn"], b["llm"]) for b in mc.state("slow")["l1"]] == [(1, 5, True)]
    assert llm.kinds().count("summary") == 1
