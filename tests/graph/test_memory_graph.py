"""The memory subgraph in front of a hand-built tool-calling LangGraph agent, ending with remember."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.store.memory import InMemoryStore

from memchat.backends.engine import Engine
from memchat.backends.memory_api import profile
from memchat.graph.memory_graph import AgentMemoryState, memory_graph, prompt_messages, remember_node
from tests.graph.test_agent_middleware import DEPOT, SCRIPT, lookup_order, plan
from tests.support.agent_fakes import ToolScriptedModel, tool_policy


def build(engine: Engine, model: ToolScriptedModel, store: InMemoryStore) -> Any:
    def agent(state: AgentMemoryState) -> dict[str, Any]:
        return {"messages": [model.invoke(prompt_messages(state, engine))]}

    def route(state: AgentMemoryState) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else "remember"

    g = StateGraph(AgentMemoryState)
    g.add_node("memory", memory_graph(engine=engine))
    g.add_node("agent", agent)
    g.add_node("tools", ToolNode([lookup_order]))
    g.add_node("remember", remember_node(engine=engine))
    g.set_entry_point("memory")
    g.add_edge("memory", "agent")
    g.add_conditional_edges("agent", route, {"tools": "tools", "remember": "remember"})
    g.add_edge("tools", "agent")
    g.add_edge("remember", END)
    return g.compile(checkpointer=InMemorySaver(), store=store)


def test_memory_subgraph_in_a_hand_built_agent(engine: Engine) -> None:
    model = ToolScriptedModel(policy=tool_policy(lambda t: plan(t)[:1]))
    store = InMemoryStore()
    app = build(engine, model, store)
    cfg = {"configurable": {"thread_id": "g1", "user_id": "u1"}}
    for text in SCRIPT + ["What is the status of my order?", "Thanks."]:
        out = app.invoke({"messages": [HumanMessage(content=text)]}, cfg)
    assert out["turn"] == 6 and out["slots"]["fact:order_number"]["value"] == "JD112233454"
    assert not any(isinstance(m, ToolMessage) or getattr(m, "tool_calls", None) for m in out["messages"])
    assert "Li Ming" in str(model.calls[-1][0].content)  # the frozen head
    tool_turn = [c for c in model.calls if any(isinstance(m, ToolMessage) for m in c)]
    assert len(tool_turn) == 1 and DEPOT in str(tool_turn[0][-1].content)
    assert engine.memory.get_ids(["tool:g1:5:0"])  # the tool result is in vector memory
    assert profile(store, "u1")["fact:name"]["value"] == "Li Ming"
