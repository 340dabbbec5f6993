"""memchat memory in a LangChain ``create_agent`` agent (MemchatMiddleware) and a hand-built LangGraph
agent (memory_graph): slots in every model call, tool results remembered, prefix-stable tool loops,
budget with long tool outputs, failed calls change nothing, cached tokens on the SGLang stub."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai.chat_models.base import _convert_message_to_dict
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from memchat.backends.engine import Engine
from memchat.backends.llm import cached_tokens
from memchat.backends.memory_api import recall
from memchat.backends.vectorstore import msg_id
from memchat.graph.agent_middleware import MemchatMiddleware
from memchat.settings import Settings
from tests.support.agent_fakes import ToolScriptedModel, tool_policy
from tests.support.sglang_stub import render_chatml

DEPOT = "Order JD112233454: parcel held at the Hangzhou depot, courier code ZX-7781."


@tool
def lookup_order(order: str) -> str:
    """Look up an order's status."""
    return DEPOT if order.endswith("54") else f"Order {order}: unknown."


@tool
def add_note(text: str) -> str:
    """Add a note to the customer's file."""
    return f"note saved: {text[:40]}"


def plan(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Two tool calls for an order question, none otherwise."""
    if "status" in text:
        return [("lookup_order", {"order": "JD112233454"}), ("add_note", {"text": text})]
    return []


def agent_for(engine: Engine, model: Any, tools: list[Any] | None = None) -> Any:
    return create_agent(model, tools=tools or [lookup_order, add_note], middleware=[MemchatMiddleware(engine=engine)],
                        checkpointer=InMemorySaver(), store=InMemoryStore())


def say(agent: Any, text: str, thread: str = "t1") -> dict[str, Any]:
    cfg = {"configurable": {"thread_id": thread, "user_id": "u1"}}
    return agent.invoke({"messages": [{"role": "user", "content": text}]}, cfg)  # type: ignore[no-any-return]


def ids(engine: Engine, messages: list[BaseMessage]) -> list[int]:
    """Token ids of the prompt as the server renders it (OpenAI dicts → Qwen ChatML)."""
    return engine.tokenizer.encode(render_chatml([_convert_message_to_dict(m) for m in messages]))


def turn_calls(model: ToolScriptedModel, start: int) -> list[list[BaseMessage]]:
    return model.calls[start:]


SCRIPT = ["My name is Li Ming.", "My order number is JD112233445.", "I am writing a market report.",
          "Correction: the order number JD112233445 should be JD112233454."]


def test_thirty_turns_keep_slots_in_every_call_and_each_call_extends_the_last(engine: Engine) -> None:
    model = ToolScriptedModel(policy=tool_policy(plan))
    agent = agent_for(engine, model)
    tool_turns = 0
    for n in range(1, 31):
        text = SCRIPT[n - 1] if n <= len(SCRIPT) else (
            f"What is the status of my order, question {n}?" if n % 3 == 0 else f"Tell me about topic {n}, please.")
        start = len(model.calls)
        out = say(agent, text)
        calls = turn_calls(model, start)
        assert isinstance(out["messages"][-1], AIMessage) and not out["messages"][-1].tool_calls
        for call in calls:
            prompt = "\n".join(str(m.content) for m in call)
            assert "Li Ming" in prompt
            if n >= 3:
                assert "market report" in prompt
            if n >= 4:
                assert "JD112233454" in prompt
        if len(calls) > 1:
            tool_turns += 1
            assert len(calls) == 3  # two tool calls, then the answer
            for prev, cur in zip(calls, calls[1:]):
                a, b = ids(engine, prev), ids(engine, cur)
                assert len(b) > len(a) and b[: len(a)] == a
    assert tool_turns == 9
    mem = agent.get_state({"configurable": {"thread_id": "t1"}}).values["memchat"]
    assert mem["turn"] == 30 and mem["slots"]["fact:order_number"]["value"] == "JD112233454"
    assert mem["l1"], "compaction ran inside the agent"
    assert all(not isinstance(m, ToolMessage) for m in mem["messages"])


def test_tool_results_are_stored_and_recalled_later(engine: Engine) -> None:
    model = ToolScriptedModel(policy=tool_policy(plan))
    agent = agent_for(engine, model)
    for text in SCRIPT[:2] + ["What is the status of my order?"]:
        say(agent, text)
    for i in range(12):  # the tool turn leaves the verbatim window
        say(agent, f"Tell me a fact about rivers number {i}.")
    start = len(model.calls)
    say(agent, "Which depot is my parcel held at, and what is the courier code?")
    prompt = str(model.calls[start][-1].content)  # the tail: memory block + new message
    assert "Hangzhou depot" in prompt and "ZX-7781" in prompt
    items = recall("Which depot holds the parcel?", "u1", "t1", engine=engine)
    assert any(it["speaker"] == "tool" and "Hangzhou" in it["text"] for it in items)


def test_recall_never_returns_a_sentence_twice(engine: Engine) -> None:
    agent = agent_for(engine, ToolScriptedModel(policy=tool_policy(plan)))
    say(agent, "My name is Li Ming. I live in Hangzhou.")
    say(agent, "I am allergic to peanuts.", thread="t2")
    items = recall("What is my name and where do I live?", "u1", None, engine=engine)
    assert any("Li Ming" in it["text"] for it in items)
    turns = " ".join(it["text"].lower() for it in items if it["kind"] != "fact")
    facts = [it["text"].lower().rstrip(".") for it in items if it["kind"] == "fact"]
    assert not [f for f in facts if f in turns], items  # a fact and the message it came from: once
    raw = engine.recall("What is my name and where do I live?", user_id="u1", thread_id=None, budget_tokens=3000)
    # the engine itself shows a fact stated in one of the user's threads as its message (it used to return both,
    # leaving recall() to drop the fact after the budget had been spent on it)
    assert any(it["kind"] != "fact" and "li ming" in it["text"].lower() for it in raw)
    assert not any(it["kind"] == "fact" and "li ming" in it["text"].lower() for it in raw)


def test_budget_holds_with_long_tool_outputs(settings: Settings, fake_llm: Any) -> None:
    small = settings.model_copy(update={"max_input_tokens": 2048, "generation_reserve": 256})
    eng = Engine(small, llm=fake_llm)

    @tool
    def dump_logs(order: str) -> str:
        """Return the order's logs."""
        return " ".join(f"log line {i} for {order}: scanned at hub." for i in range(3000))

    model = ToolScriptedModel(policy=tool_policy(lambda t: [("dump_logs", {"order": "A1"}), ("dump_logs", {"order": "B2"})]
                                                 if "logs" in t else []))
    agent = agent_for(eng, model, [dump_logs])
    say(agent, "My name is Li Ming.")
    say(agent, "Show me the logs of my orders.")
    calls = model.calls[1:]
    assert len(calls) == 3
    for call in calls:
        assert len(ids(eng, call)) <= small.prompt_limit
    tool_texts = [str(m.content) for m in calls[-1] if isinstance(m, ToolMessage)]
    assert len(tool_texts) == 2 and all("truncated" in t for t in tool_texts)
    assert ids(eng, calls[1]) == ids(eng, calls[2])[: len(ids(eng, calls[1]))]


@pytest.mark.parametrize("fail", ["model", "tool"])
def test_failed_call_leaves_memory_unchanged(engine: Engine, fail: str) -> None:
    @tool
    def flaky(order: str) -> str:
        """Look up an order (fails)."""
        raise RuntimeError("backend down")

    model = ToolScriptedModel(policy=tool_policy(lambda t: [("flaky" if fail == "tool" else "lookup_order",
                                                             {"order": "JD112233454"})] if "status" in t else []))
    agent = agent_for(engine, model, [flaky, lookup_order])
    say(agent, "My name is Li Ming.")
    cfg = {"configurable": {"thread_id": "t1"}}
    before = agent.get_state(cfg).values["memchat"]
    if fail == "model":
        model.fail_at = {len(model.calls) + 2}  # the call after the tool result
    with pytest.raises(Exception, match="scripted model failure|backend down"):
        say(agent, "What is the status of my order? My name is Wang Fang.")
    assert agent.get_state(cfg).values["memchat"] == before
    assert not engine.memory.get_ids([msg_id("t1", 3), "tool:t1:2:0"])
    model.fail_at = set()
    say(agent, "Thanks.")
    values = agent.get_state(cfg).values
    assert values["memchat"]["turn"] == 2 and values["memchat"]["slots"]["fact:name"]["value"] == "Li Ming"
    assert not any("Wang Fang" in str(m.content) for m in values["messages"])
    assert not any("Wang Fang" in str(m.content) for m in model.calls[-1])


def test_sglang_stub_tool_loop_is_cached(settings: Settings, stub: str) -> None:
    s = settings.model_copy(update={"llm_base_url": stub, "llm_model": "Qwen/Qwen2.5-7B-Instruct"})
    eng = Engine(s)
    agent = create_agent(eng.llm, tools=[lookup_order, add_note], middleware=[MemchatMiddleware(engine=eng)],
                         checkpointer=InMemorySaver())
    root = stub.rsplit("/v1", 1)[0]
    httpx.post(f"{root}/_control", json={"mode": "ok", "reset": True})
    for text in SCRIPT:
        say(agent, text)
    call = '<tool_call>\n{{"name": "{0}", "arguments": {{"order": "JD112233454"}}}}\n</tool_call>'
    httpx.post(f"{root}/_control", json={"replies": [call.format("lookup_order"), call.format("add_note"),
                                                     "It is held at the Hangzhou depot."]})
    out = say(agent, "What is the status of my order?")
    turn = out["messages"][out["messages"].index(next(m for m in reversed(out["messages"])
                                                      if isinstance(m, HumanMessage))) + 1:]
    replies = [m for m in turn if isinstance(m, AIMessage)]
    assert [bool(m.tool_calls) for m in replies] == [True, True, False]
    for m in replies[1:]:
        prompt = int((m.usage_metadata or {})["input_tokens"])
        assert (cached_tokens(m) or 0) >= 0.9 * prompt, (cached_tokens(m), prompt)


def test_async_agent_gets_the_same_prompt(engine: Engine) -> None:
    import asyncio

    model = ToolScriptedModel(policy=tool_policy(plan))
    agent = agent_for(engine, model)
    cfg = {"configurable": {"thread_id": "a1", "user_id": "u1"}}
    for text in SCRIPT[:2] + ["What is the status of my order?"]:
        asyncio.run(agent.ainvoke({"messages": [{"role": "user", "content": text}]}, cfg))
    assert len(model.calls) == 5 and all("Li Ming" in str(c[0].content) for c in model.calls[1:])
    assert any(DEPOT in str(m.content) for m in model.calls[-1])
    assert asyncio.run(agent.aget_state(cfg)).values["memchat"]["turn"] == 3
