"""The LLM tier of slot extraction: a second call after the reply, checked against the user's own words,
applied before the next turn; failures counted, never fatal; its prompt extends the reply prompt's prefix."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from memchat.backends.engine import Engine
from memchat.backends.extraction import cache_for
from memchat.chat import MemChat
from memchat.settings import Settings
from tests.support.fakes import ScriptedChatModel
from tests.support.serving import STUB_MODEL


def ops(*items: tuple[str, str, str, str, str]) -> str:
    """A scripted extraction answer: (op, kind, key, value, evidence) tuples."""
    return json.dumps({"operations": [dict(zip(("op", "kind", "key", "value", "evidence"), it, strict=True))
                                      for it in items]})


def make(settings: Settings, **kw: Any) -> tuple[MemChat, ScriptedChatModel]:
    llm = ScriptedChatModel(**kw)
    return MemChat(engine=Engine(settings.model_copy(update={"llm_extraction": "true"}), llm=llm)), llm


def turn(mc: MemChat, text: str) -> dict[str, Any]:
    mc.turn("t", text, user_id="u")
    cache_for(mc.engine).drain()
    return {k: v["value"] for k, v in (mc.state("t").get("slots") or {}).items()}


@pytest.mark.parametrize(("url", "mode", "on"), [
    ("http://llm:8000/v1", "auto", True), ("", "auto", False), ("", "true", True), ("http://llm:8000/v1", "false", False),
    ("http://llm:8000/v1", "0", False), ("", "yes", True), ("", True, True),
])
def test_mode_resolves_for_remote_and_embedded(tmp_path: Path, url: str, mode: Any, on: bool) -> None:
    s = Settings(data_dir=tmp_path, llm_base_url=url, llm_extraction=mode, _env_file=None)  # type: ignore[call-arg]
    assert s.extraction_enabled is on


def test_default_is_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMCHAT_LLM_EXTRACTION", raising=False)
    s = Settings(data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    assert s.llm_extraction == "auto" and not s.extraction_enabled
    monkeypatch.setenv("MEMCHAT_LLM_EXTRACTION", "True")  # an old boolean value
    assert Settings(data_dir=tmp_path, _env_file=None).llm_extraction == "true"  # type: ignore[call-arg]


def test_set_correct_retract_apply_on_the_next_turn(settings: Settings) -> None:
    mc, llm = make(settings, extractions=[
        ops(("set", "fact", "pet", "a beagle called Toffee", "I have a beagle called Toffee"),
            ("set", "fact", "car", "a red Volvo", "I drive a red Volvo")),
        ops(("correct", "fact", "car", "a blue Volvo", "I drive a blue Volvo")),
        ops(("retract", "fact", "pet", "Toffee", "I no longer have Toffee")),
    ])
    assert "fact:pet" not in turn(mc, "I have a beagle called Toffee and I drive a red Volvo.")  # not before the turn
    slots = turn(mc, "Sorry, my mistake: I drive a blue Volvo.")
    assert slots["fact:pet"] == "a beagle called Toffee" and slots["fact:car"] == "a red Volvo"
    slots = turn(mc, "Sad news, I no longer have Toffee.")
    assert slots["fact:car"] == "a blue Volvo"
    slots = turn(mc, "Thanks.")
    assert "fact:pet" not in slots and slots["fact:car"] == "a blue Volvo"
    assert llm.kinds() == ["respond", "extraction"] * 4  # one call before each reply, one after it
    log = [(e["action"], e["key"], e["turn"]) for e in mc.state("t")["slot_log"]]
    assert ("corrected", "fact:car", 3) in log and ("retracted", "fact:pet", 4) in log
    prompt = llm.calls[1][1]  # the extraction: the reply prompt, the reply, the instruction
    assert [m.content for m in prompt[:-2]] == [m.content for m in llm.calls[0][1]]
    assert prompt[-2].type == "ai" and "Memory task" in str(prompt[-1].content)


def test_the_turn_does_not_wait_for_the_extraction(settings: Settings) -> None:
    gate = threading.Event()
    mc, llm = make(settings, extraction_gate=gate,
                   extractions=[ops(("set", "fact", "hobby", "bouldering", "I go bouldering on Sundays"))])
    t0 = time.monotonic()
    r = mc.turn("t", "I go bouldering on Sundays.", user_id="u")
    assert r.turn == 1 and time.monotonic() - t0 < 5 and not gate.is_set()  # answered while it still runs
    gate.set()
    assert turn(mc, "See you.")["fact:hobby"] == "bouldering"


def test_ungrounded_third_party_question_and_quoted_operations_are_rejected(settings: Settings) -> None:
    msg = ('My sister is allergic to peanuts. Am I allergic to shellfish? The poster says "I am Zed". '
           "If I win I would buy a boat. I keep three hens.")
    mc, llm = make(settings, replies=["Hello, I am Nova, your assistant."], extractions=[ops(
        ("set", "fact", "allergy", "peanuts", "My sister is allergic to peanuts"),  # someone else
        ("set", "fact", "allergy", "shellfish", "Am I allergic to shellfish?"),  # a question
        ("set", "fact", "name", "Zed", "I am Zed"),  # a quote
        ("set", "fact", "boat", "a boat", "I would buy a boat"),  # a hypothetical
        ("set", "fact", "name", "Nova", "I am Nova"),  # the assistant's words
        ("set", "fact", "pets", "three goats", "I keep three hens"),  # a value the user never said
        ("set", "fact", "hens", "three hens", "I keep three hens"),  # the one real statement
    )])
    before = mc.engine.metrics.snapshot().get("extraction_rejected", 0)
    turn(mc, msg)
    slots = turn(mc, "ok")
    assert slots == {"fact:hens": "three hens"}
    assert mc.engine.metrics.snapshot().get("extraction_rejected", 0) - before == 6
    assert llm.kinds().count("extraction") == 2


def test_a_message_that_only_asks_gets_no_extraction_call(settings: Settings) -> None:
    """Nothing the model could answer for a question would pass the checks, so no call is made (one LLM call
    fewer per such turn on the GPU); the next statement's extraction runs as before."""
    mc, llm = make(settings, extractions=[ops(("set", "fact", "pet", "a beagle", "I have a beagle"))])
    turn(mc, "What did I tell you about my pets? Do you remember?")
    assert llm.kinds() == ["respond"] and mc.engine.metrics.snapshot().get("extraction_skipped") == 1
    turn(mc, "I have a beagle.")
    slots = turn(mc, "What is its name?")
    assert slots == {"fact:pet": "a beagle"} and llm.kinds() == ["respond", "respond", "extraction", "respond"]


@pytest.mark.parametrize("answer", ["REPLY#3 Stub reply", '{"operations": "none"}', "[1, 2]", None])
def test_invalid_or_failed_extraction_is_counted_and_harmless(settings: Settings, answer: str | None) -> None:
    kw: dict[str, Any] = {"fail_kinds": {"extraction"}} if answer is None else {"extractions": [answer]}
    mc, _ = make(settings, **kw)
    before = mc.engine.metrics.snapshot().get("extraction_failures", 0)
    turn(mc, "My email is kim@example.org.")
    slots = turn(mc, "Thanks!")
    assert mc.state("t")["turn"] == 2 and slots == {"fact:email": "kim@example.org"}
    failed = 2 if answer is None else 1  # a failing backend fails both turns' extractions, a bad answer one
    assert mc.engine.metrics.snapshot().get("extraction_failures", 0) - before == failed


def test_extraction_prompt_shares_the_reply_prompt_prefix_on_sglang(stub: str, tmp_path: Path) -> None:
    """Only the instruction (~100 tokens) and the template around the reply are new: >= 90% cached once the
    prompt has ~1000 tokens (an integrator's persona here; in longer threads the turns and memories)."""
    persona = "You are the support assistant of a bicycle shop. " + " ".join(
        f"Rule {i}: answer politely, cite the order when one is known, and keep prices in euros." for i in range(40))
    settings = Settings(llm_base_url=stub, llm_model=STUB_MODEL, data_dir=tmp_path, llm_extraction="auto",
                        persona=persona, _env_file=None)  # type: ignore[call-arg]
    mc = MemChat(settings)
    root = stub.removesuffix("/v1")
    for text in ("Hi, I am Lena and I live in Graz.", "My order number is BK-20931, it has not arrived yet.",
                 "I am vegetarian, by the way, and I prefer short answers."):
        mc.turn("bike", text, user_id="lena")
        cache_for(mc.engine).drain()
        usage = httpx.get(f"{root}/_stats").json()["last_usage"]
        body = httpx.get(f"{root}/_stats").json()["last_request"]
        assert (body.get("response_format") or {}).get("json_schema", {}).get("name") == "slot_operations"
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        assert cached >= 0.9 * usage["prompt_tokens"], usage
