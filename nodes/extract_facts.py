"""Node 1: slot operations (set, correct, retract, complete, forget) from the new user turn.

Only the user's own words count: the assistant's replies ("您好，我是客服小美") never become facts
about the user, and each operation keeps the sentence that supports it as its evidence."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from memchat.backends.engine import Engine
from memchat.backends.extraction import take
from memchat.memory.namespaces import public_user
from memchat.memory.rules import extract_rules
from memchat.memory.slots import keep_grounded
from memchat.memory.state import Context, State, current_values, upgrade_state
from memchat.nodes.common import current_message, text_of, thread_id, user_id


def extract_facts(state: State, config: RunnableConfig, runtime: Runtime[Context] | None = None, *,
                  engine: Engine) -> dict[str, Any]:
    """Rules tier (zero LLM calls) on the new message, after the LLM tier's operations on the previous one
    (computed after its reply, see :mod:`memchat.backends.extraction`), so this turn's own words come last."""
    eng = engine
    human = current_message(state)
    text = text_of(human)
    # a checkpoint from before the state keys were renamed moves to the new names here, in the turn's first step
    update: dict[str, Any] = {**upgrade_state(state), "user_id": public_user(user_id(state, config, runtime))}
    limit = eng.settings.max_message_tokens
    if eng.tokenizer.count(text) > limit:
        text = eng.tokenizer.truncate(text, limit)
        update["messages"] = [HumanMessage(content=text, id=human.id)]
        update["counters"] = {"truncated_messages": 1}
    cands = [c.as_dict() for c in extract_rules(text, "user")]
    update["slot_candidates"] = take(eng, thread_id(config), current_values(state)) + keep_grounded(cands)
    return update
