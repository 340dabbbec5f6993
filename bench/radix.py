"""A recording stub chat model that simulates a radix prefix cache without eviction (Qwen tokens).

Every request is rendered as a ChatML template renders it and tokenized with the Qwen tokenizer;
its cached tokens are the longest common token prefix with any earlier request followed by the
reply it got (SGLang's RadixAttention keeps generated tokens too). Replies are ``REPLY#n`` (as the
black-box probe's stub answers), JSON for structured calls (summaries, extraction).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from memchat.bench.common import StubChatModel

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


@dataclass
class Call:
    """One recorded request."""

    n: int
    kind: str  # respond | summary | extraction
    messages: list[dict[str, str]]
    prompt_tokens: int
    cached_tokens: int
    reply: str
    seconds: float

    @property
    def uncached(self) -> int:
        return self.prompt_tokens - self.cached_tokens


def chatml(messages: list[dict[str, str]]) -> str:
    """A prompt as Qwen's ChatML template renders it, with the generation prompt."""
    body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


class RadixCache:
    """Token sequences seen so far; ``lookup`` gives the longest common prefix with any of them."""

    def __init__(self) -> None:
        self.seqs: list[np.ndarray] = []
        self.by_head: dict[int, list[int]] = {}

    def lookup(self, ids: np.ndarray) -> int:
        best = 0
        if not len(ids):
            return 0
        for i in self.by_head.get(int(ids[0]), []):
            seq = self.seqs[i]
            n = min(len(seq), len(ids))
            if n <= best:
                continue
            diff = np.flatnonzero(seq[:n] != ids[:n])
            best = max(best, int(diff[0]) if len(diff) else n)
        return best

    def add(self, ids: np.ndarray) -> None:
        if len(ids):
            self.by_head.setdefault(int(ids[0]), []).append(len(self.seqs))
            self.seqs.append(ids)


class RadixStubChatModel(BaseChatModel):
    """Records each request with its simulated cached tokens (see the module docstring)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    tokenizer: Any = None
    calls: list[Call] = Field(default_factory=list)
    _cache: RadixCache = PrivateAttr(default_factory=RadixCache)
    _json: StubChatModel = PrivateAttr(default_factory=StubChatModel)

    @property
    def _llm_type(self) -> str:
        return "memchat-radix-stub"

    def _answer(self, messages: list[BaseMessage], kwargs: dict[str, Any], tags: list[str]) -> str:
        t0 = time.perf_counter()
        ms = [{"role": _ROLES.get(m.type, m.type), "content": str(m.content)} for m in messages]
        n = len(self.calls) + 1
        structured = bool(kwargs.get("response_format"))
        if structured:
            reply = self._json._text(messages, kwargs)
        else:
            reply = f"REPLY#{n}"
        kind = "extraction" if any("extract" in t for t in tags) else ("summary" if structured else "respond")
        text = chatml(ms)
        ids = np.asarray(self.tokenizer.encode(text), dtype=np.int64)
        cached = self._cache.lookup(ids)
        self._cache.add(np.asarray(self.tokenizer.encode(text + reply + "<|im_end|>\n"), dtype=np.int64))
        self.calls.append(Call(n=n, kind=kind, messages=ms, prompt_tokens=len(ids), cached_tokens=cached,
                               reply=reply, seconds=time.perf_counter() - t0))
        return reply

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        text = self._answer(messages, kwargs, list(getattr(run_manager, "tags", None) or []))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        text = self._answer(messages, kwargs, list(getattr(run_manager, "tags", None) or []))
        chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
        if run_manager:
            run_manager.on_llm_new_token(text, chunk=chunk)
        yield chunk
