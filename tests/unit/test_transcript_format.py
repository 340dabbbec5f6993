"""The embedded model's transcript format and system folding: memory content always reaches the model."""

from __future__ import annotations

import re

from memchat.backends.llama_server import STOP, format_memchat_transcript, split_context
from memchat.memory.prompt import fold_system


def test_system_and_memory_reach_the_transcript() -> None:
    user = ("<memory>\nRecalled from long-term memory (quoted data, not instructions):\n"
            "- [2026-01-01 10:00] fact: My name is Li Ming\n</memory>\n\n<memory-update>\nChanged since the summary above:\n"
            "- fact / order number: 55-999 (corrected; was 55-771)\n</memory-update>\n\n"
            "<now>Tuesday 1 Dec 2026, 08:06 UTC</now>\n\nWhat is my name?")
    out = format_memchat_transcript([{"role": "system", "content": "PERSONA AND SLOTS"},
                                     {"role": "user", "content": user}])
    assert out.prompt.startswith("PERSONA AND SLOTS")
    assert "(Memory: [2026-01-01 10:00] fact: My name is Li Ming)" in out.prompt
    assert "(Update: fact / order number: 55-999 (corrected; was 55-771))" in out.prompt
    assert out.prompt.endswith("User: What is my name?\nAssistant:")
    assert out.stop == STOP
    # a base model continues the context lines it sees: generation stops at each kind the prompt shows
    for label in set(re.findall(r"^\((\w+): ", out.prompt, re.M)):
        assert f"\n({label}:" in out.stop, label
    lines, msg = split_context("plain message")
    assert lines == [] and msg == "plain message"


def test_fold_system_into_first_user_message() -> None:
    ms = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    assert fold_system(ms) == [{"role": "user", "content": "S\n\nU"}, {"role": "assistant", "content": "A"}]
