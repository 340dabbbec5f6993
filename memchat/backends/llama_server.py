"""Entry point of the embedded server: llama-cpp-python's server plus memchat's transcript format.

Base models (the shipped Gemma 3 270M) have no chat template; llama.cpp would fall back to a
Llama-2 format and the replies are junk. ``memchat-transcript`` renders a plain transcript with
the system text first, a one-shot example and ``User:``/``Assistant:`` turns, with stop sequences.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from llama_cpp import llama_chat_format as fmt

ONE_SHOT = (
    "Example conversation:\n"
    "User: Hi, my name is Ana.\n"
    "Assistant: Nice to meet you, Ana. How can I help you today?\n"
    "User: What is my name?\n"
    "Assistant: Your name is Ana.\n"
)
STOP = ["\nUser:", "\n### ", "\nAssistant:", "<end_of_turn>", "\n(Memory:", "\n(Update:", "\n(Now:"]


_BLOCK = re.compile(r"<(memory|memory-update)>\n(?:[^\n]*\n)?(.*?)\n</\1>\s*", re.S)
_NOW = re.compile(r"<now>([^<\n]*)</now>\s*")


def split_context(content: str) -> tuple[list[str], str]:
    """Pull memchat's memory / slot-update blocks out of a user message: (context lines, message)."""
    lines: list[str] = []
    for m in _BLOCK.finditer(content):
        label = "Memory" if m.group(1) == "memory" else "Update"
        lines += [f"({label}: {ln.lstrip('- ').strip()})" for ln in m.group(2).splitlines() if ln.strip()]
    lines += [f"(Now: {m.group(1).strip()})" for m in _NOW.finditer(content)]
    return lines, _NOW.sub("", _BLOCK.sub("", content)).strip()


@fmt.register_chat_format("memchat-transcript")
def format_memchat_transcript(messages: list[Any], **kwargs: Any) -> fmt.ChatFormatterResponse:
    """System text, a one-shot example, then the dialogue as a transcript."""
    parts: list[str] = []
    for m in messages:
        content = m.get("content") or ""
        if not isinstance(content, str):
            content = " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
        role = m.get("role")
        if role == "system":
            parts.append(content.strip() + "\n\n" + ONE_SHOT + "\n### Conversation\n")
        elif role == "user":
            context, message = split_context(content)
            parts.append("".join(line + "\n" for line in context) + f"User: {message}\n")
        elif role == "assistant":
            parts.append(f"Assistant: {content.strip()}\n")
    if not parts or not parts[0].endswith("### Conversation\n"):
        parts.insert(0, ONE_SHOT + "\n### Conversation\n")
    prompt = "".join(parts) + "Assistant:"
    return fmt.ChatFormatterResponse(prompt=prompt, stop=STOP)


def main() -> None:
    """Run llama_cpp.server's CLI with the format above registered."""
    from llama_cpp.server.__main__ import main as server_main

    sys.argv[0] = "memchat-llama-server"
    server_main()


if __name__ == "__main__":
    main()
