"""Prompt texts of memchat, kept as plain text files next to this module."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files


@lru_cache(maxsize=64)
def load_prompt(name: str) -> str:
    """The text of ``prompts/<name>.txt``."""
    return files("memchat.prompts").joinpath(f"{name}.txt").read_text(encoding="utf-8")
