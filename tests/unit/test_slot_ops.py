"""Slot operations from the rules tier (EN and ZH), how update_slots applies them, and where they show."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from memchat.chat import MemChat
from memchat.memory.llm_ops import check, might_state
from memchat.memory.rules import extract_rules, sentences
from memchat.memory.rules_guard import normalize
from memchat.memory.slot_ops import OPS
from memchat.memory.slots import apply_candidates, forget, render_slots
from memchat.settings import Settings
from tests.support.fakes import ScriptedChatModel
from tests.support.serving import serve_app

BENCH = Path(__file__).resolve().parents[2] / "memchat" / "bench"


def ops(text: str) -> list[tuple[str, str, str]]:
    return [(c.op, c.key, c.value) for c in extract_rules(text)]


def values(text: str) -> dict[str, str]:
    return {c.key: c.value for c in extract_rules(text) if c.op == "set"}


@pytest.mark.parametrize("text", [
    # questions
    "What's my phone number again?", "Could you tell me where I live", "Do you remember my employer?",
    "我的邮箱是哪个？", "你记得我叫啥吗", "我住在哪个城市来着",
    # hypotheticals and conditionals
    "If my name were Clara, would you call me Clara?", "Let's say I live in Madrid.", "假如我住在西安，该去哪玩",
    "要是我对花生过敏的话怎么办",
    # quotes and reported speech
    'The narrator says "I am allergic to roses".', "My teacher told me she lives in Hull.", "他说他叫刘洋。",
    # third parties
    "My husband's name is Arjun.", "My daughter is allergic to kiwi.", "Her email is mia@corp.io.",
    "我女儿对芒果过敏。", "我老板叫钱多多。", "我朋友住在大连。",
    # chit-chat that looks like instructions or names
    "我是老用户了。", "以后再聊吧。", "别着急，慢慢来。", "不要取消订单了。", "我收到之后再说。",
    "I'm Fine, thanks.", "I'm so tired today.",
])
def test_never_a_slot(text: str) -> None:
    assert extract_rules(text) == []


def test_assistant_words_never_become_user_facts() -> None:
    assert extract_rules("您好，我是客服小丽，请问有什么可以帮您？", source="assistant") == []
    assert extract_rules("Sure! Your name is Pat and you live in Cork.", source="assistant") == []


def test_facts_en() -> None:
    got = values("I'm Ingrid, I'm based in Bergen, and I have a peanut allergy.")
    assert got == {"fact:name": "Ingrid", "fact:location": "Bergen", "fact:allergy": "peanut"}
    assert values("Text me on +1 415 555 0132.")["fact:phone"] == "+1 415 555 0132"
    assert values("I'm a software developer at Initech.") == {"fact:occupation": "software developer",
                                                           "fact:employer": "Initech"}
    assert values("I was born on 3 March 1990.")["fact:birthday"] == "3 March 1990"
    assert ops("I'm pescatarian and I don't eat pork.") == [("set", "fact:diet", "pescatarian"),
                                                          ("set", "fact:diet", "don't eat pork")]
    assert values("Please call me Bea.")["fact:name"] == "Bea"


def test_facts_zh() -> None:
    assert values("我叫欧阳娜娜，住在杭州市西湖区，对芒果过敏。") == {
        "fact:name": "欧阳娜娜", "fact:location": "杭州市西湖区", "fact:allergy": "芒果"}
    assert values("我是陈晓，在一家医院当医生。") == {"fact:name": "陈晓", "fact:employer": "一家医院",
                                              "fact:occupation": "医生"}
    assert values("我的手机是 18600001234，邮箱 chen.x@abc.cn")["fact:phone"] == "18600001234"
    assert values("我的手机是 18600001234，邮箱 chen.x@abc.cn")["fact:email"] == "chen.x@abc.cn"
    assert values("我的生日是五月三日。")["fact:birthday"] == "五月三日"


def test_ids_are_clean_spans_and_coexist(tmp_path) -> None:
    assert values("快递单号YT8812345566一直没更新")["fact:tracking_number"] == "YT8812345566"
    assert values("My ticket is #HD-40077, still open.")["fact:ticket_number"] == "#HD-40077"
    s = Settings(data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    slots: dict = {}
    for turn, text in enumerate(["订单号AB123450001还没发货。", "还有一个订单号是CD998877001。",
                                 "更正：订单号AB123450001应该是AB123450010。"], 1):
        slots, _ = apply_candidates(slots, [c.as_dict() for c in extract_rules(text)], settings=s,
                                    thread_id="t", user_id="u", turn=turn)
    assert sorted(v["value"] for v in slots.values()) == ["AB123450010", "CD998877001"]


def test_instructions_and_withdrawals() -> None:
    assert ops("Answer in Spanish from now on.")[0][:2] == ("set", "instruction:language")
    assert ops("请用繁体中文回复我。")[0][:2] == ("set", "instruction:language")
    assert ops("Use a numbered list for steps.")[0][:2] == ("set", "instruction:format")
    assert ops("回答控制在三句话以内。")[0][:2] == ("set", "instruction:length")
    assert ops("Keep it brief, please.")[0][:2] == ("set", "instruction:length")
    assert ops("No jargon please.")[0][:2] == ("set", "preference:jargon")
    assert ops("Stop being so formal.")[0][:2] == ("retract", "instruction:tone")
    assert ops("Jargon is fine now.")[0][:2] == ("retract", "preference:jargon")
    assert ops("可以用表情了。")[0][:2] == ("retract", "preference:emojis")
    assert ops("不需要再用英文回答了。")[0][:2] == ("retract", "instruction:language")


def test_tasks_and_completion() -> None:
    assert values("I'm putting together a budget for the trip.")["task:current"] == "a budget for the trip"
    assert ops("The budget is finished.")[0][:2] == ("complete", "task:current")
    assert values("我最近在筹备一个读书会。")["task:current"] == "一个读书会"
    assert ops("读书会的方案做完了。")[0][:2] == ("complete", "task:current")


def test_retract_correct_complete_forget_apply(tmp_path) -> None:
    s = Settings(data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    slots: dict = {}
    log: list = []
    for turn, text in enumerate(["I'm allergic to penicillin and I'm allergic to wasps.", "I live in Graz.",
                                 "I'm drafting a lease agreement.", "I'm no longer allergic to wasps.",
                                 "I moved to Linz.", "The lease agreement is done.", "My email is k@x.io.",
                                 "Please forget my email."], 1):
        for c in extract_rules(text):
            if c.op == "forget":
                slots, ev = forget(slots, [c.key], thread_id="t", user_id="u", turn=turn, why=c.evidence)
            else:
                slots, ev = apply_candidates(slots, [c.as_dict()], settings=s, thread_id="t", user_id="u", turn=turn)
            log += ev
    assert {k: v["value"] for k, v in slots.items()} == {"fact:allergy": "penicillin", "fact:location": "Linz"}
    actions = [(e["action"], e["key"], e["old"]) for e in log if e["action"] != "set"]
    assert actions == [("retracted", "fact:allergy_2", "wasps"), ("corrected", "fact:location", "Graz"),
                       ("completed", "task:current", "a lease agreement"), ("forgotten", "fact:email", "k@x.io")]
    assert all(e["why"] for e in log)
    assert "wasps" not in render_slots(slots) and "Graz" not in render_slots(slots)


KEY = "sk-slots-test"


def test_through_memchat_and_api(memchat: MemChat, fake_llm: ScriptedChatModel, settings: Settings) -> None:
    memchat.turn("t1", "我叫沈默，对虾过敏。", user_id="u")
    memchat.turn("t1", "其实我现在不对虾过敏了。", user_id="u")
    memchat.turn("t1", "我的名字是沈墨，刚才打错了。", user_id="u")
    mem = memchat.memory("t1")
    assert {s["key"]: s["value"] for s in mem["slots"]} == {"fact:name": "沈墨"}
    assert [(e["action"], e["old"]) for e in mem["slot_history"]][-2:] == [("retracted", "虾"), ("corrected", "沈默")]
    head = memchat.context("t1")["messages"][0]["content"]
    assert "虾" not in head  # a retraction leaves the head at once
    fake_llm.replies = ["您好，我是客服王芳，我住在上海。"]  # the assistant's words are not the user's facts
    memchat.turn("t1", "你好", user_id="u")
    memchat.turn("t1", "好的", user_id="u")
    assert {s["value"] for s in memchat.memory("t1")["slots"]} == {"沈墨"}
    memchat.turn("t2", "Hello again", user_id="u")
    head2 = fake_llm.calls[-1][1][0].content
    assert "沈墨" in head2 and "from an earlier conversation" in head2
    app_settings = settings.model_copy(update={"api_key": SecretStr(KEY)})
    from memchat.server.app import create_app

    with serve_app(create_app(app_settings, memchat, probe=False)) as url:
        assert httpx.get(f"{url}/v1/users/u/audit").status_code == 401
        r = httpx.get(f"{url}/v1/users/u/audit", headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200
        rows = r.json()["data"]
        assert [(e["action"], e["key"]) for e in rows if e["action"] != "set"] == [
            ("retracted", "fact:allergy"), ("corrected", "fact:name")]
        assert all(e["why"] and e["thread_id"] == "t1" for e in rows)
        bad = httpx.get(f"{url}/v1/users/a%2Fb/audit", headers={"Authorization": f"Bearer {KEY}"})
        assert bad.status_code in (400, 404)


def test_bench_slots_scores_cases(tmp_path, capsys) -> None:
    import json

    from memchat.bench.slots import main

    cases = [{"id": "en", "turns": ["I'm Odile and I live in Nantes.", "If I lived in Lyon, what then?"],
              "ask": "Where do I live?", "expect": [{"kinds": ["fact"], "any": ["Nantes"]},
                                                    {"kinds": ["fact"], "any": ["Odile"]}], "forbid": ["Lyon"]},
             {"id": "zh", "turns": ["我姐姐叫宋佳。"], "ask": "我叫什么？", "expect": [{"kinds": ["fact"], "any": ["宋佳"]}],
              "forbid": []}]
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")
    assert main(["--data", str(path), "--quiet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["cases"], out["slot_recall"], out["false_free"]) == (2, round(2 / 3, 4), 1.0)
    assert [f["id"] for f in out["failing"]] == ["zh"] and out["failing"][0]["missed"] == ["宋佳"]


def _spans(sentence: str) -> set[str]:
    """Every run of words (of characters, for Chinese) of a sentence: the evidence a model could quote."""
    parts = sentence.split() if " " in sentence else list(sentence)
    sep = " " if " " in sentence else ""
    return {sep.join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)}


def test_no_extraction_call_where_the_checks_would_reject_every_operation() -> None:
    """``might_state`` skips the LLM tier's call only for messages where :func:`check` rejects whatever the
    model answers (every sentence asks, or is hypothetical, reported or quoted): no slot is lost by the skip."""
    msgs: list[str] = []
    for name in ("slots_sample", "slots_unseen", "slots_blind", "slots_fresh"):
        for case in json.loads((BENCH / f"{name}.json").read_text(encoding="utf-8")):
            msgs += [*case["turns"], case["ask"]]
    skipped = [m for m in msgs if not might_state(m)]
    assert 20 <= len(skipped) < len(msgs) // 2
    for msg in skipped:
        for sent in sentences(normalize(msg)):
            for ev in _spans(sent):
                for verb in OPS:
                    value = "" if verb in ("retract", "forget") else ev
                    for key in ("email", "*"):
                        op = {"op": verb, "kind": "fact", "key": key, "value": value, "evidence": ev}
                        assert check(op, msg) is None, (msg, op)
    for msg in ("My name is Sam. What is yours?", "Can you forget my email?", "请忘记我的邮箱。", "我叫李明。",
                "Could you call me Sam from now on?", "I keep three hens. Do you?"):
        assert might_state(msg), msg
    for msg in ("What is my order number?", "我的订单号是多少？", 'She said "I am Zed".',
                "If I had a dog, what would you name it?", "Do you remember where I live? And my email?"):
        assert not might_state(msg), msg
