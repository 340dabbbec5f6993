"""The hard token budget: the prompt never exceeds the limit, the memory section stays within its cap."""

from __future__ import annotations

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from memchat.backends.tokens import TRUNCATION_MARKER, load_tokenizer
from memchat.memory.prompt import Budget, Turn, assemble, render_head
from memchat.settings import Settings

TOK = load_tokenizer()
BUDGET = Budget(TOK)
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=3000)
words = st.lists(st.sampled_from(["订单", "report", "李明", "😀", "tone", "x" * 40, "数据分析", "hello world"]),
                 min_size=0, max_size=400).map(" ".join)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    message=st.one_of(texts, words),
    turns=st.lists(st.tuples(st.one_of(texts, words), st.one_of(texts, words)), max_size=12),
    mems=st.lists(st.one_of(texts, words), max_size=40),
    l1=st.lists(words, max_size=8),
    limit=st.integers(min_value=300, max_value=4000),
    mem_cap=st.integers(min_value=0, max_value=1500),
)
def test_prompt_never_exceeds_budget(message: str, turns: list[tuple[str, str]], mems: list[str], l1: list[str],
                                     limit: int, mem_cap: int) -> None:
    s = Settings(memory_tokens=mem_cap, max_input_tokens=limit + 256, generation_reserve=256,
                 llm_base_url="http://x/v1", _env_file=None)  # type: ignore[call-arg]
    assert s.prompt_limit == limit
    head = render_head("You are helpful.", {"fact:name": {"kind": "fact", "value": "Li Ming"}}, {"topics": l1[:3]})
    memories = [{"id": f"m{i}", "text": t, "speaker": "user", "kind": "turn", "date": "2024-01-01"}
                for i, t in enumerate(mems)]
    sticky = memories[: len(memories) // 2]
    tt = [Turn(i + 1, u, a, sticky if i == 0 else [], []) for i, (u, a) in enumerate(turns)]
    lines = [{"from_turn": i, "to_turn": i, "text": t} for i, t in enumerate(l1)]
    res = assemble(settings=s, budget=BUDGET, head=head, l1=lines, turns=tt, message=message or "hi",
                   memories=memories[len(memories) // 2:], notes=["fact / name: Li Ming"])
    assert res.sections["total"] <= limit
    assert BUDGET.messages(res.messages) == res.sections["total"]
    assert res.sections["memory"] <= mem_cap


def test_long_message_is_truncated_with_marker() -> None:
    s = Settings(max_input_tokens=1500, generation_reserve=200, llm_base_url="http://x/v1",
                 _env_file=None)  # type: ignore[call-arg]
    res = assemble(settings=s, budget=BUDGET, head="You are helpful.", l1=[], turns=[], message="数据 " * 3000,
                   memories=[], notes=[])
    assert res.truncated_message and res.sections["total"] <= s.prompt_limit
    assert TRUNCATION_MARKER.split("{")[0] in res.messages[-1]["content"]


def test_embedded_limit_follows_local_context() -> None:
    s = Settings(llm_base_url="", local_n_ctx=4096, generation_reserve=512, _env_file=None)  # type: ignore[call-arg]
    assert s.prompt_limit == 4096 - 512
