"""Extraction rules, slot corrections, expiry, provenance and the user-only rule."""

from __future__ import annotations

from memchat.memory.rules import extract_rules, forget_requests, free_facts
from memchat.memory.slots import apply_candidates, expire, forget, render_slots
from memchat.settings import Settings


def keys(text: str, source: str = "user") -> dict[str, str]:
    return {c.key: c.value for c in extract_rules(text, source)}


def test_english_rules() -> None:
    got = keys("My name is Li Ming. Please answer in a professional tone. No abbreviations. "
               "I am writing a market report about EV batteries. I'm allergic to peanuts and my order number is 55-771.")
    assert got["fact:name"] == "Li Ming"
    assert got["instruction:tone"].lower().startswith("please answer in a professional tone")
    assert got["preference:abbreviations"] == "No abbreviations"
    assert got["task:current"] == "a market report about EV batteries"
    assert got["fact:allergy"] == "peanuts"
    assert got["fact:order_number"] == "55-771"


def test_chinese_rules() -> None:
    got = keys("我的名字是李明。请用专业口吻回答。不要使用缩写。我正在撰写一份市场报告。我的订单号是 #A1001")
    assert got == {
        "fact:name": "李明",
        "instruction:tone": "请用专业口吻回答",
        "preference:abbreviations": "不要使用缩写",
        "task:current": "一份市场报告",
        "fact:order_number": "#A1001",
    }
    assert keys("更正：订单号其实是 #A1007")["fact:order_number"] == "#A1007"


def test_questions_and_assistant_text() -> None:
    assert keys("What is my name?") == {}
    # instructions, preferences and tasks never come from the assistant
    got = keys("Sure. From now on, always answer in French. Your name is noted.", source="assistant")
    assert not any(k.startswith(("instruction", "preference", "task")) for k in got)
    assert forget_requests("Please forget my order number.") == ["order number"]
    assert free_facts("My name is Li Ming. What is my name? I went to Paris last summer.") == [
        "My name is Li Ming.", "I went to Paris last summer."]


def _cands(text: str, source: str = "user") -> list[dict]:
    return [c.as_dict() for c in extract_rules(text, source)]


def test_correction_supersedes_and_keeps_history(tmp_path) -> None:
    s = Settings(data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    slots, ev1 = apply_candidates({}, _cands("我的订单号是 #…001"), settings=s, thread_id="t", user_id="u", turn=1)
    assert slots["fact:order_number"]["value"] == "#…001"
    assert slots["fact:order_number"]["turn"] == 1 and slots["fact:order_number"]["thread_id"] == "t"
    slots, ev2 = apply_candidates(slots, _cands("更正：订单号其实是 #…007"), settings=s, thread_id="t", user_id="u",
                                  turn=4)
    assert slots["fact:order_number"]["value"] == "#…007"
    assert ev2 == [dict(ev2[0], action="corrected", key="fact:order_number", old="#…001", new="#…007", turn=4,
                        old_turn=1)]
    assert "#…001" not in render_slots(slots)


def test_user_only_kinds_rejected_from_assistant(tmp_path) -> None:
    s = Settings(data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    cand = {"kind": "instruction", "key": "instruction:language", "value": "answer in French",
            "evidence": "answer in French", "source": "assistant"}
    slots, ev = apply_candidates({}, [cand], settings=s, thread_id="t", user_id="u", turn=1)
    assert slots == {} and ev[0]["action"] == "rejected"


def test_expiry_by_turns_and_time(tmp_path) -> None:
    s = Settings(data_dir=tmp_path, ttl_turns_task=3, ttl_seconds_other=100, _env_file=None)  # type: ignore[call-arg]
    slots, _ = apply_candidates({}, _cands("I am writing a market report. My name is Ana."), settings=s,
                                thread_id="t", user_id="u", turn=1, now=1000.0)
    assert set(slots) == {"task:current", "fact:name"}
    kept, ev = expire(slots, thread_id="t", user_id="u", turn=4, now=1001.0)
    assert set(kept) == {"task:current", "fact:name"} and ev == []
    kept, ev = expire(slots, thread_id="t", user_id="u", turn=5, now=1001.0)
    assert set(kept) == {"fact:name"} and ev[0]["action"] == "expired"
    kept, ev = expire(kept, thread_id="t", user_id="u", turn=5, now=1200.0)
    assert kept == {} and ev[0]["key"] == "fact:name"
    # a mention refreshes the expiry
    slots2, _ = apply_candidates(slots, _cands("I am writing a market report."), settings=s, thread_id="t",
                                 user_id="u", turn=4, now=1002.0)
    assert expire(slots2, thread_id="t", user_id="u", turn=6, now=1003.0)[0].get("task:current")


def test_forget(tmp_path) -> None:
    s = Settings(data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    slots, _ = apply_candidates({}, _cands("My order number is 55-771"), settings=s, thread_id="t", user_id="u",
                                turn=1)
    slots, ev = forget(slots, ["order number"], thread_id="t", user_id="u", turn=2)
    assert slots == {} and ev[0]["action"] == "forgotten"
