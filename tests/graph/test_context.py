"""Per-run values through LangGraph's run context (``context_schema=Context``), and services from one engine."""

from __future__ import annotations

import gc

import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from pydantic import SecretStr

from memchat.backends import engine as engine_mod
from memchat.backends.engine import Engine, settings_key, shared_engine
from memchat.graph.builder import build_graph
from memchat.memory.state import Context
from memchat.settings import Settings
from tests.support.fakes import ScriptedChatModel


def test_invoke_context_user_id_is_honoured_in_process(engine: Engine) -> None:
    g = build_graph(checkpointer=InMemorySaver(), engine=engine)
    cfg = {"configurable": {"thread_id": "t"}}
    out = g.invoke({"messages": [HumanMessage(content="My name is Li Ming.")]}, cfg,  # type: ignore[arg-type]
                   context=Context(user_id="alice"))
    assert out["user_id"] == "alice"
    assert out["slots"]["fact:name"]["user_id"] == "alice"


def test_configurable_stays_the_platform_entry_and_context_wins(engine: Engine) -> None:
    g = build_graph(checkpointer=InMemorySaver(), engine=engine)
    msg = {"messages": [HumanMessage(content="hello")]}
    out = g.invoke(msg, {"configurable": {"thread_id": "a", "user_id": "bob"}})  # type: ignore[arg-type]
    assert out["user_id"] == "bob"
    out = g.invoke(msg, {"configurable": {"thread_id": "b", "user_id": "bob"}},  # type: ignore[arg-type]
                   context=Context(user_id="carol"))
    assert out["user_id"] == "carol"


def test_llm_params_from_context_reach_the_model(engine: Engine) -> None:
    seen: list[dict[str, object]] = []
    real_bind = type(engine.llm).bind

    def bind(self: object, **kw: object) -> object:
        seen.append(kw)
        return real_bind(self, **kw)  # type: ignore[arg-type]

    type(engine.llm).bind = bind  # type: ignore[method-assign]
    try:
        g = build_graph(checkpointer=InMemorySaver(), engine=engine)
        g.invoke({"messages": [HumanMessage(content="hi")]}, {"configurable": {"thread_id": "t"}},  # type: ignore[arg-type]
                 context=Context(llm_params={"max_tokens": 7, "temperature": 0.1}))
    finally:
        type(engine.llm).bind = real_bind  # type: ignore[method-assign]
    assert {"max_completion_tokens": 7, "temperature": 0.1} in seen


def test_studio_can_render_the_input_schema(engine: Engine) -> None:
    g = build_graph(engine=engine)
    schema = g.get_input_jsonschema()
    assert "messages" in schema["properties"]
    assert set(g.get_context_jsonschema()["properties"]) >= {"user_id", "llm_params"}


def test_engines_are_shared_per_exact_settings_and_forgotten(settings: Settings) -> None:
    other_key = settings.model_copy(update={"llm_api_key": SecretStr("another-secret")})
    a, b, c = shared_engine(settings), shared_engine(settings.model_copy()), shared_engine(other_key)
    assert a is b
    assert c is not a  # the masked dump of both settings is the same: a key must never share an engine
    assert settings.model_dump_json() == other_key.model_dump_json()
    key = settings_key(other_key)
    assert key in engine_mod._engines
    del c
    gc.collect()
    assert key not in engine_mod._engines  # no one holds it: the process forgets it (and its secret)


def test_summary_calls_do_not_stream_as_reply_tokens(engine: Engine) -> None:
    g = build_graph(checkpointer=InMemorySaver(), engine=engine)
    cfg = {"configurable": {"thread_id": "t"}}
    tagged: list[list[str]] = []
    for i in range(2 * engine.settings.l0_turns + 1):  # L0 reaches 2N turns: the summarize node calls the LLM
        for _chunk, meta in g.stream({"messages": [HumanMessage(content=f"message {i}")]}, cfg,  # type: ignore[arg-type]
                                     stream_mode="messages"):
            tagged.append(list(meta.get("tags") or []))
    assert engine.llm.calls and any(kind == "summary" for kind, _ in engine.llm.calls)  # type: ignore[attr-defined]
    assert not [t for t in tagged if "memchat:summary" in t]
    assert [t for t in tagged if "memchat:respond" in t]


def test_the_streamed_reply_is_the_stored_reply(engine: Engine) -> None:
    """In ``stream_mode="messages"`` the reply shows once: its chunks and the stored message share one id."""
    g = build_graph(checkpointer=InMemorySaver(), engine=engine)
    cfg = {"configurable": {"thread_id": "t"}}
    seen = [(m.id, type(m).__name__) for m, _meta in g.stream(
        {"messages": [HumanMessage(content="hello there")]}, cfg, stream_mode="messages")]  # type: ignore[arg-type]
    ai_ids = {i for i, kind in seen if kind.startswith("AI")}
    assert len(ai_ids) == 1  # the node used to return the reply under a new id: a second, whole copy
    stored = g.get_state(cfg).values["messages"][-1]  # type: ignore[arg-type]
    assert stored.id in ai_ids and stored.content


def test_a_failed_turn_never_stacks_under_the_next_message(engine: Engine, fake_llm: ScriptedChatModel) -> None:
    """Atomic turns without MemChat: build_graph + your own checkpointer."""
    g = build_graph(checkpointer=InMemorySaver(), engine=engine)
    cfg = {"configurable": {"thread_id": "t"}}
    g.invoke({"messages": [HumanMessage(content="My name is Li Ming.")]}, cfg)  # type: ignore[arg-type]
    fake_llm.fail_kinds = {"respond"}
    with pytest.raises(Exception):  # noqa: B017 - whatever the LLM raised
        g.invoke({"messages": [HumanMessage(content="My order number is 55-771")]}, cfg)  # type: ignore[arg-type]
    assert g.get_state(cfg).next == ("respond",)  # type: ignore[arg-type]  # resumable: invoke(None) finishes it
    fake_llm.fail_kinds = set()
    out = g.invoke({"messages": [HumanMessage(content="What is my name?")]}, cfg)  # type: ignore[arg-type]
    assert out["turn"] == 2 and "fact:order_number" not in out["slots"]  # the half turn was rolled back
    assert [m.content for m in out["messages"] if isinstance(m, HumanMessage)] == [
        "My name is Li Ming.", "What is my name?"]
    fake_llm.fail_kinds = {"respond"}
    with pytest.raises(Exception):  # noqa: B017
        g.invoke({"messages": [HumanMessage(content="I live in Hangzhou.")]}, cfg)  # type: ignore[arg-type]
    fake_llm.fail_kinds = set()
    assert g.invoke(None, cfg)["turn"] == 3  # type: ignore[arg-type]  # or resumed: the same turn, finished


def test_a_failed_turn_is_rolled_back_on_the_async_path_too(engine: Engine, fake_llm: ScriptedChatModel) -> None:
    """``ainvoke`` / ``astream`` (``langgraph dev`` runs the graph through ``astream_events`` → ``astream``)."""
    import asyncio

    g = build_graph(checkpointer=InMemorySaver(), engine=engine)
    cfg = {"configurable": {"thread_id": "t"}}

    async def run() -> dict[str, object]:
        await g.ainvoke({"messages": [HumanMessage(content="My name is Li Ming.")]}, cfg)  # type: ignore[arg-type]
        fake_llm.fail_kinds = {"respond"}
        with pytest.raises(Exception):  # noqa: B017
            await g.ainvoke({"messages": [HumanMessage(content="My order number is 55-771")]}, cfg)  # type: ignore[arg-type]
        assert (await g.aget_state(cfg)).next == ("respond",)  # type: ignore[arg-type]
        fake_llm.fail_kinds = set()
        return await g.ainvoke({"messages": [HumanMessage(content="What is my name?")]}, cfg)  # type: ignore[arg-type,no-any-return]

    out = asyncio.run(run())
    assert out["turn"] == 2 and "fact:order_number" not in out["slots"]  # type: ignore[operator]
