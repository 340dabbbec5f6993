"""The memory policy: each memory shown once, answers with their questions, nothing spent on filler,
facts only from statements that carry one, the turn's date in the volatile tail."""

from __future__ import annotations

import pytest

from memchat.backends.engine import Engine
from memchat.backends.vectorstore import MemoryDoc, msg_id
from memchat.chat import MemChat
from memchat.memory.prompt import Budget, Turn, assemble
from memchat.memory.recall_policy import asks, carries_fact, content_free, now_text


def _msg(tid: str, seq: int, text: str, speaker: str) -> MemoryDoc:
    return MemoryDoc(id=msg_id(tid, seq), text=text, user_id="u1", thread_id=tid, kind="turn", speaker=speaker,
                     turn=(seq + 1) // 2, seq=seq, date="2026-01-05 10:00")


def test_rules() -> None:
    for filler in ("好的。", "好的，我知道了。", "ok thanks", "Thank you!", "嗯嗯", "..."):
        assert content_free(filler), filler
    assert not content_free("ok, my order number is #A-10057")
    assert not carries_fact("好的，我考虑一下。") and not carries_fact("I'll think about it.")
    assert carries_fact("I am allergic to peanuts.") and carries_fact("我对花生过敏，请记住。")
    assert not carries_fact("Do I have a dog?")
    assert asks("What is my name") and asks("我的订单号是多少") and asks("Any news?")
    assert not asks("My name is Li Ming.")
    assert now_text("2026-01-05 10:00") == "Monday 5 Jan 2026, 10:00 UTC"


def test_fact_and_its_message_are_shown_once(engine: Engine) -> None:
    text = "By the way, I am allergic to peanuts and shellfish."
    engine.store_docs([_msg("t1", 1, text, "user"), _msg("t1", 2, "Noted.", "assistant"),
                       MemoryDoc(id="fact:1", text="I am allergic to peanuts and shellfish.", user_id="u1",
                                 thread_id="t1", kind="fact", turn=1, date="2026-01-05 10:00", scope="user")])
    got = engine.recall("what am I allergic to?", user_id="u1", thread_id="t1", budget_tokens=2000)
    assert [it["id"] for it in got if "peanuts" in it["text"]] == [msg_id("t1", 1)]
    # in another thread the fact is all there is: it is shown as a fact
    other = engine.recall("what am I allergic to?", user_id="u1", thread_id="t2", budget_tokens=2000)
    assert [it["kind"] for it in other] == ["fact"]
    # shown already (e.g. in the verbatim window): neither the message nor the fact comes again
    again = engine.recall("what am I allergic to?", user_id="u1", thread_id="t1", budget_tokens=2000,
                          exclude_ids={msg_id("t1", 1)})
    assert not [it for it in again if "peanuts" in it["text"]]


def test_answer_comes_with_its_question_and_filler_is_skipped(engine: Engine) -> None:
    engine.store_docs([_msg("t1", 1, "When does the Lisbon office open?", "user"),
                       _msg("t1", 2, "The Lisbon office opens at nine on weekdays.", "assistant"),
                       _msg("t1", 3, "好的。", "user"), _msg("t1", 4, "ok thanks", "assistant"),
                       _msg("t1", 5, "Unrelated: the cat sleeps a lot.", "user")])
    got = engine.recall("Lisbon office weekdays nine", user_id="u1", thread_id="t1", budget_tokens=2000)
    ids = [it["id"] for it in got]
    assert msg_id("t1", 2) in ids and msg_id("t1", 1) in ids and ids.index(msg_id("t1", 1)) < ids.index(
        msg_id("t1", 2))
    assert not {msg_id("t1", 3), msg_id("t1", 4)} & set(ids)
    # an answer whose question does not fit is not shown alone
    one_line = engine.tokenizer.count("- [5 Jan 2026] assistant: The Lisbon office opens at nine on weekdays.") + 2
    alone = engine.recall("Lisbon office weekdays nine", user_id="u1", thread_id="t1", budget_tokens=one_line)
    assert msg_id("t1", 2) not in [it["id"] for it in alone]


def test_date_in_the_tail_stays_with_its_turn(engine: Engine) -> None:
    b = Budget(engine.tokenizer)
    t1 = Turn(1, "hello there", "hi", [], [], date="2026-01-05 10:00")
    first = assemble(settings=engine.settings, budget=b, head="H", l1=[], turns=[], message="hello there",
                     memories=[], notes=[], now="2026-01-05 10:00")
    assert first.messages[-1]["content"] == "<now>Monday 5 Jan 2026, 10:00 UTC</now>\n\nhello there"
    second = assemble(settings=engine.settings, budget=b, head="H", l1=[], turns=[t1], message="and now?",
                      memories=[], notes=[], now="2026-01-06 08:30")
    assert second.messages[: len(first.messages)] == first.messages  # append-only: the old tail is unchanged
    assert second.messages[-1]["content"].startswith("<now>Tuesday 6 Jan 2026, 08:30 UTC</now>")


def test_content_free_turn_recalls_nothing(engine: Engine) -> None:
    from langchain_core.messages import HumanMessage

    from memchat.nodes.retrieve import retrieve

    engine.store_docs([_msg("t", 1, "好的，我们明天在北京见面。", "user"), _msg("t", 3, "ok thanks, see you at the lake", "user")])
    cfg = {"configurable": {"thread_id": "t", "user_id": "u1"}}
    for filler in ("好的。", "ok thanks"):
        assert retrieve({"messages": [HumanMessage(content=filler)], "turn": 5}, cfg, engine=engine)["retrieved"] == []
    got = retrieve({"messages": [HumanMessage(content="我们在北京哪里见面？")], "turn": 5}, cfg, engine=engine)
    assert got["retrieved"] and got["retrieved"][0]["id"] == msg_id("t", 1)


@pytest.mark.timeout(120)
def test_turns_store_only_statements_as_facts_and_show_the_date(engine: Engine) -> None:
    mc = MemChat(engine=engine)
    for text in ("My favourite colour is teal and I live in Porto.", "好的，我考虑一下。"):
        mc.turn("t", text, user_id="u")
    assert mc.context("t")["messages"][-1]["content"].startswith("<now>")
    facts = engine.recall("favourite colour teal Porto 考虑一下", user_id="u", thread_id="other", budget_tokens=500)
    assert [it["text"] for it in facts] == ["My favourite colour is teal and I live in Porto."]


def test_yesterday_is_read_against_the_turns_date(engine: Engine) -> None:
    """The retrieve node reads "yesterday" / "上周" against the turn's date: yesterday's memory is recalled
    although its words match the question less than older lines do (a 120-token memory share)."""
    from datetime import UTC, datetime, timedelta

    from langchain_core.messages import HumanMessage

    from memchat.nodes.retrieve import retrieve

    def at(seq: int, text: str, days_ago: int) -> MemoryDoc:
        when = (datetime.now(UTC) - timedelta(days=days_ago)).strftime("%Y-%m-%d %H:%M")
        return MemoryDoc(id=msg_id("t", seq), text=text, user_id="u1", thread_id="t", kind="turn", seq=seq,
                         speaker="user", date=when)

    engine = Engine(engine.settings.model_copy(update={"memory_tokens": 120}), llm=engine.llm)
    old = [at(2 * i + 1, f"I told you about the tickets for the concert, part {i}.", 30) for i in range(40)]
    engine.store_docs([*old, at(101, "My landlord finally fixed the boiler.", 1), at(103, "我的猫生病了。", 9)])
    cfg = {"configurable": {"thread_id": "t", "user_id": "u1"}}

    def recalled(q: str) -> list[str]:
        out = retrieve({"messages": [HumanMessage(content=q)], "turn": 80}, cfg, engine=engine)["retrieved"]
        return [str(it["id"]) for it in out]

    assert msg_id("t", 101) in recalled("What did I tell you yesterday?")
    assert msg_id("t", 103) in recalled("上周我跟你说了什么？")
    assert msg_id("t", 101) not in recalled("What did I tell you about the tickets?")  # no date named
