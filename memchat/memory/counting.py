"""What memchat needs from a tokenizer (the implementation is :mod:`memchat.backends.tokens`)."""

from __future__ import annotations

from typing import Protocol

TRUNCATION_MARKER = "[… truncated {n} tokens …]"


class TokenCounter(Protocol):
    """What memchat needs from a tokenizer."""

    def count(self, text: str) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def truncate(self, text: str, max_tokens: int) -> str: ...
