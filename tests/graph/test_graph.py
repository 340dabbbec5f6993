"""The five-node turn over the scripted LLM: structure, summaries, prefix stability, atomicity."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage

from memchat.backends.engine import Engine
from memchat.chat import MemChat
from memchat.graph.builder import build_graph, graph
from memchat.settings import Settings
from tests.support.fakes import ScriptedChatModel


def make(settings: Settings, **kw: object) -> tuple[MemChat, ScriptedChatModel]:
    llm = ScriptedChatModel(**kw)  # type: ignore[arg-type]
    return MemChat(engine=Engine(settings, llm=llm)), llm


def test_mermaid_order_and_conditional_summarize() -> None:
    mm = graph.get_graph().draw_mermaid()
    for edge in ("__start__ --> extract_facts;", "extract_facts --> update_slots;", "update_slots -.-> summarize;",
                 "update_slots -.-> retrieve;", "summarize --> retrieve;", "retrieve --> respond;",
                 "respond --> __end__;"):
        assert edge in mm
    assert set(graph.get_graph().nodes) == {"__start__", "extract_facts", "update_slots", "summarize", "retrieve",
                                            "respond", "__end__"}
    assert graph.checkpointer is None


def test_build_graph_with_default_checkpointer(settings: Settings) -> None:
    g = build_graph(settings, checkpointer=True, store=True)
    assert g.checkpointer is not None and (settings.data_dir / "checkpoints.sqlite").exists()


def test_turns_slots_and_one_llm_call(memchat: MemChat, fake_llm: ScriptedChatModel) -> None:
    memchat.turn("t", "My name is Li Ming. Please answer in a professional tone.", user_id="u")
    memchat.turn("t", "What is my name?", user_id="u")
    assert fake_llm.kinds() == ["respond", "respond"]
    mem = memchat.memory("t")
    assert mem["turns"] == 2
    assert {s["key"]: s["value"] for s in mem["slots"]}["fact:name"] == "Li Ming"
    system = fake_llm.calls[-1][1][0].content
    assert "Li Ming" in system and "professional tone" in system


def test_l1_every_five_turns_then_l2(settings: Settings) -> None:
    # inline summaries: this checks the schedule turn by turn (the background path may fold a turn later
    # when its summary is still running; tests/graph/test_integrator.py covers it)
    s = settings.model_copy(update={"l0_turns": 5, "l2_threshold": 10, "background_summaries": False})
    mc, llm = make(s, summary_text="They discussed item.")
    l1_sizes, l2_seen = [], []
    for i in range(1, 27):
        mc.turn("t", f"Message number {i} about topic {i}.", user_id="u")
        st = mc.state("t")
        l1_sizes.append(len(st.get("l1") or []))
        l2_seen.append(st.get("l2") is not None)
    # compaction at the start of turns 11, 16, 21 ...: one L1 line per 5 turns
    assert l1_sizes[9] == 0 and l1_sizes[10] == 1 and l1_sizes[15] == 2
    assert l1_sizes[20] == 1 and l2_seen[20] and not l2_seen[19]  # L1 covered 15 turns -> 10 folded into L2
    assert mc.state("t")["l2"]["covers_turns"] == [1, 10]
    calls = llm.kinds()
    assert calls.count("respond") == 26
    assert calls.count("summary") / 26 <= 0.25
    # L0 stays between N and 2N-1 verbatim turns
    assert 5 <= len(mc.memory("t")["recent_turns"]) <= 9


def test_l2_on_demand(memchat: MemChat, fake_llm: ScriptedChatModel) -> None:
    for i in range(7):
        memchat.turn("t", f"Point {i}: we decided to use option {i}.", user_id="u")
    mem = memchat.summarize_now("t")
    assert mem["l2"] and set(mem["l2"]) >= {"topics", "decisions", "open_questions", "facts"}
    assert len(mem["recent_turns"]) == 5 and mem["turns"] == 7
    memchat.turn("t", "And now?", user_id="u")
    assert memchat.memory("t")["turns"] == 8


def test_head_byte_identical_without_slot_changes(memchat: MemChat, fake_llm: ScriptedChatModel) -> None:
    memchat.turn("t", "My name is Li Ming.", user_id="u")
    heads, prompts = [], []
    for i in range(8):
        r = memchat.turn("t", f"Tell me something about item {i}.", user_id="u")
        ctx = memchat.context("t")
        heads.append(ctx["messages"][0]["content"])
        prompts.append((ctx["messages"], r.reply, ctx["prefix_reuse"]))
    assert len(set(heads)) == 1
    # between compactions (turns 2..9) the previous prompt + its reply is a prefix of the next prompt
    for (prev, reply, _), (cur, _, reuse) in zip(prompts, prompts[1:]):
        assert cur[: len(prev)] == prev
        assert cur[len(prev)] == {"role": "assistant", "content": reply}
        assert reuse > 0.6


def test_slot_change_goes_to_tail_until_compaction(memchat: MemChat, fake_llm: ScriptedChatModel) -> None:
    memchat.turn("t", "我的订单号是 #A1001", user_id="u")
    head1 = memchat.context("t")["messages"][0]["content"]
    memchat.turn("t", "更正：订单号其实是 #A1007", user_id="u")
    ctx = memchat.context("t")
    assert ctx["messages"][0]["content"] == head1  # head not rewritten mid-window
    assert "#A1007 (corrected; was #A1001)" in ctx["messages"][-1]["content"]
    slots = {s["key"]: s for s in memchat.memory("t")["slots"]}
    assert slots["fact:order_number"]["value"] == "#A1007"
    log = memchat.audit(thread_id="t")
    assert [e["action"] for e in log if e["key"] == "fact:order_number"] == ["set", "corrected"]
    assert memchat.audit(user_id="u")[-1]["new"] == "#A1007"
    for i in range(10):
        memchat.turn("t", f"filler {i}", user_id="u")
    assert "#A1007" in memchat.context("t")["messages"][0]["content"]  # refrozen at compaction


def test_failed_turn_rolls_back(store_memchat: MemChat, fake_llm: ScriptedChatModel, store_engine: Engine) -> None:
    store_memchat.turn("t", "My name is Li Ming.", user_id="u")
    before = store_memchat.state("t")
    n_docs = store_engine.memory.count()
    fake_llm.fail_kinds = {"respond"}
    with pytest.raises(Exception, match="timed out|failed"):
        store_memchat.turn("t", "My order number is 55-771", user_id="u")
    after = store_memchat.state("t")
    assert after["turn"] == 1 and len(after["messages"]) == len(before["messages"])
    assert "fact:order_number" not in after["slots"]
    assert store_engine.memory.count() == n_docs
    fake_llm.fail_kinds = set()
    store_memchat.turn("t", "My order number is 55-771", user_id="u")
    assert store_memchat.memory("t")["turns"] == 2
    n2 = store_engine.memory.count()
    # a retried turn after a rollback upserts the same ids: no duplicates
    assert n2 == n_docs + 3  # user turn, reply, one free fact


def test_crash_mid_turn_is_recovered(memchat: MemChat, fake_llm: ScriptedChatModel) -> None:
    memchat.turn("t", "My name is Li Ming.", user_id="u")
    cfg = memchat.config("t")
    # run the first nodes only, persisting per step (as a process killed mid-turn would leave it)
    memchat.graph.invoke({"messages": [HumanMessage(content="half a turn")]}, cfg,
                         interrupt_before=["respond"], durability="sync")
    assert memchat.graph.get_state(cfg).next == ("respond",)
    assert memchat.recover("t") is True
    st = memchat.state("t")
    assert st["turn"] == 1 and len(st["messages"]) == 2 and not memchat.graph.get_state(cfg).next
    memchat.turn("t", "Next message", user_id="u")
    assert memchat.memory("t")["turns"] == 2


def test_summary_failure_never_blocks(settings: Settings) -> None:
    # inline summaries: the counts below are read right after the compacting turns (the background path
    # is tested in tests/graph/test_integrator.py)
    s = settings.model_copy(update={"l0_turns": 2, "background_summaries": False})
    mc, llm = make(s, fail_kinds={"summary"})
    for i in range(6):
        mc.turn("t", f"I visited city number {i} last year.", user_id="u")
    st = mc.state("t")
    assert st["turn"] == 6 and st["l1"] and st["l1"][0]["llm"] is False
    assert "city number 0" in st["l1"][0]["text"]
    assert st["counters"]["summary_failures"] >= 1
    mc2, llm2 = make(s.model_copy(update={"data_dir": s.data_dir / "b"}), bad_json=True)
    for i in range(5):
        mc2.turn("t", f"hello {i}", user_id="u")
    assert mc2.state("t")["counters"]["summary_failures"] >= 1


def test_grounding_rejects_invented_llm_facts(settings: Settings) -> None:
    from memchat.nodes.summarize import summarize_l1

    s = settings.model_copy(update={"llm_extraction": True})
    llm = ScriptedChatModel(facts=["The user has a dog named Rex", "The user lives on Mars"])
    eng = Engine(s, llm=llm)
    _, facts, ok = summarize_l1(eng, [(1, "I have a dog named Rex.", "Nice!")])
    assert ok and facts == ["The user has a dog named Rex"]


def test_truncation_marker(settings: Settings) -> None:
    s = settings.model_copy(update={"max_message_tokens": 50})
    mc, llm = make(s)
    mc.turn("t", "word " * 500, user_id="u")
    sent = llm.calls[-1][1][-1].content
    assert "truncated" in sent and len(sent) < 1000


def test_scoping_users_and_threads(store_memchat: MemChat, store_engine: Engine) -> None:
    store_memchat.turn("a1", "My favourite fruit is durian and I keep bees.", user_id="alice")
    store_memchat.turn("b1", "My favourite fruit is mango and I keep goats.", user_id="bob")
    store_memchat.turn("a2", "Hello again.", user_id="alice")
    items = store_engine.recall("favourite fruit bees goats", user_id="alice", thread_id="a2", budget_tokens=500)
    texts = " ".join(i["text"] for i in items)
    assert "durian" in texts and "mango" not in texts and "goats" not in texts
    # raw turns are thread-scoped, facts user-scoped
    assert all(i["kind"] == "fact" or i["thread_id"] == "a2" for i in items)
    other = store_engine.recall("favourite fruit", user_id="alice", thread_id="a1", budget_tokens=500)
    assert any(i["kind"] == "turn" and i["thread_id"] == "a1" for i in other)


def test_forget_thread_and_user(store_memchat: MemChat, store_engine: Engine) -> None:
    store_memchat.turn("a1", "My favourite fruit is durian.", user_id="alice")
    store_memchat.turn("b1", "My favourite fruit is mango.", user_id="bob")
    store_memchat.delete_thread("a1")
    assert store_memchat.state("a1") == {}
    assert not store_engine.recall("durian", user_id="alice", thread_id="a1", budget_tokens=500) or all(
        i["kind"] == "fact" for i in store_engine.recall("durian", user_id="alice", thread_id="a1", budget_tokens=500))
    store_memchat.delete_user("alice")
    assert store_engine.recall("durian", user_id="alice", thread_id=None, budget_tokens=500) == []
    assert store_engine.recall("mango", user_id="bob", thread_id="b1", budget_tokens=500)


def test_user_profile_carries_to_new_thread(memchat: MemChat, fake_llm: ScriptedChatModel) -> None:
    memchat.turn("t1", "My name is Li Ming. No abbreviations please.", user_id="u")
    memchat.turn("t2", "Hi there", user_id="u")
    keys = {s["key"] for s in memchat.memory("t2")["slots"]}
    assert {"fact:name", "preference:abbreviations"} <= keys
    assert "Li Ming" in fake_llm.calls[-1][1][0].content
