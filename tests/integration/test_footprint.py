"""A bounded checkpoint footprint: each thread keeps its last K checkpoints, and the last prompt and
retrievals live in one store entry per thread instead of every checkpoint; rollback and the inspector
views still work."""

from __future__ import annotations

import pytest

from memchat.backends import persistence
from memchat.backends.checkpoint_prune import prune, thread_bytes
from memchat.backends.engine import Engine
from memchat.chat import MemChat
from memchat.settings import Settings
from tests.support.fakes import ScriptedChatModel

pytest_plugins = ["tests.support.services"]  # pg_url


def _make(settings: Settings, keep: int) -> tuple[MemChat, ScriptedChatModel]:
    llm = ScriptedChatModel()
    return MemChat(engine=Engine(settings.model_copy(update={"checkpoint_keep": keep}), llm=llm)), llm


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """``settings`` with checkpoints and store in SQLite, or in a fresh PostgreSQL database."""
    if request.param == "postgres":
        return settings.model_copy(update={"checkpoint_url": request.getfixturevalue("pg_url")})
    return settings


def test_history_is_pruned_to_the_last_k_and_the_thread_still_works(backend: Settings) -> None:
    mc, llm = _make(backend, keep=3)
    try:
        _pruned_thread(mc, llm)
    finally:
        persistence.close(mc.checkpointer)
        persistence.close(mc.store)
        mc.leases.close()


def _pruned_thread(mc: MemChat, llm: ScriptedChatModel) -> None:
    for i in range(8):
        mc.turn("t", f"My favourite number is {i}. What is the capital of France?", user_id="u")
    held = thread_bytes(mc.checkpointer, "t")
    assert held["checkpoints"] == 3 and held["bytes"] > 0
    assert len(list(mc.graph.get_state_history(mc.config("t")))) == 3
    # a failed turn still rolls back to the checkpoint it started from
    llm.fail_kinds = {"respond"}
    with pytest.raises(Exception, match="timed out|failed"):
        mc.turn("t", "this turn fails", user_id="u")
    llm.fail_kinds = set()
    assert mc.memory("t")["turns"] == 8
    res = mc.turn("t", "and now?", user_id="u")
    assert res.turn == 9 and thread_bytes(mc.checkpointer, "t")["checkpoints"] == 3
    # the inspector: the last prompt, with the message of the last turn, and its token counts
    ctx = mc.context("t")
    assert ctx["turn"] == 9 and ctx["messages"][-1]["content"].endswith("and now?") and ctx["sections"]["total"] > 0
    if type(mc.checkpointer).__name__ == "PostgresSaver":  # no channel blob outlives the checkpoints using it
        with mc.checkpointer.conn.connection() as conn:
            orphans = conn.execute(
                "SELECT count(*) AS n FROM checkpoint_blobs b WHERE thread_id = 't' AND NOT EXISTS (SELECT 1 FROM "
                "checkpoints c WHERE c.thread_id = b.thread_id AND c.checkpoint -> 'channel_versions' ->> b.channel "
                "= b.version)").fetchone()["n"]
        assert orphans == 0


def test_checkpoints_carry_no_prompt_and_views_survive_a_restart(settings: Settings) -> None:
    mc, _ = _make(settings, keep=0)
    mc.turn("v", "My sister's bakery is in Lisbon, near the river.", user_id="u")
    for i in range(11):
        mc.turn("v", f"Tell me about chess opening number {i}.", user_id="u")
    mc.turn("v", "Where is my sister's bakery?", user_id="u")
    values = mc.state("v")
    assert "messages" not in values["last_prompt"] and values["retrieved"] == []  # out of the checkpoint
    assert thread_bytes(mc.checkpointer, "v")["checkpoints"] == 13  # keep 0 = all
    again, _ = _make(settings, keep=0)  # a new process: the views come from the store
    ctx = again.context("v")
    assert ctx["turn"] == 13 and "Where is my sister's bakery?" in ctx["messages"][-1]["content"]
    assert ctx["reply"].startswith("reply to:")
    mem = again.memory("v")
    assert any("Lisbon" in (r.get("text") or "") for r in mem["retrieved"])
    assert ctx["prefix_reuse"] > 0  # the second prompt was compared with the first (from the view)
    again.delete_thread("v")
    assert again.views.load("v") is None


def test_prune_keeps_the_newest(settings: Settings) -> None:
    mc, _ = _make(settings, keep=0)
    for i in range(5):
        mc.turn("p", f"turn {i}", user_id="u")
    newest = mc.graph.get_state(mc.config("p")).config["configurable"]["checkpoint_id"]
    assert prune(mc.checkpointer, "p", 2) == 3
    assert mc.graph.get_state(mc.config("p")).config["configurable"]["checkpoint_id"] == newest
    assert prune(mc.checkpointer, "p", 2) == 0 and prune(mc.checkpointer, "p", 0) == 0
