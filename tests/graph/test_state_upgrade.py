"""State keys named for what they hold; a checkpoint written under the old names keeps working."""

from __future__ import annotations

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from memchat.backends.engine import Engine
from memchat.graph.builder import build_graph
from memchat.memory.state import RENAMED, current_values, upgrade_state


def test_an_old_checkpoint_moves_to_the_new_key_names(engine: Engine) -> None:
    g = build_graph(checkpointer=InMemorySaver(), engine=engine)
    cfg = {"configurable": {"thread_id": "old"}}
    g.invoke({"messages": [HumanMessage(content="My name is Li Ming.")]}, cfg)  # type: ignore[arg-type]
    g.invoke({"messages": [HumanMessage(content="What did I say my name was?")]}, cfg)  # type: ignore[arg-type]
    now = g.get_state(cfg).values  # type: ignore[arg-type]
    assert {"frozen_head", "l0_shown", "last_prompt", "slot_candidates"} <= set(now)
    assert not set(RENAMED) & {k for k, v in now.items() if v is not None}
    # the same thread as an older memchat wrote it: the values under the old names, none under the new
    old = {o: now.get(n) for o, n in RENAMED.items()}
    g.update_state(cfg, {**old, **{n: None for n in RENAMED.values()}})  # type: ignore[arg-type]
    legacy = g.get_state(cfg).values  # type: ignore[arg-type]
    assert legacy["frozen_head"] is None and legacy["head"] == now["frozen_head"]
    assert current_values(legacy)["frozen_head"] == now["frozen_head"]  # readers see the new names at once
    assert current_values(legacy)["l0_shown"] == now["l0_shown"] and "l0_meta" not in current_values(legacy)
    out = g.invoke({"messages": [HumanMessage(content="Thanks!")]}, cfg)  # type: ignore[arg-type]
    assert out["turn"] == 3 and "Li Ming" in str(out["frozen_head"])  # the head survived the upgrade
    assert [m["turn"] for m in out["l0_shown"]][:2] == [1, 2]  # so did what the turns were sent with
    assert all(out.get(o) is None for o in RENAMED)  # the old names are cleared
    assert upgrade_state(out) == {}
