"""memchat: long-term memory for multi-turn LLM chat, as a LangGraph graph.

The public API is imported lazily (PEP 562), so ``import memchat.settings`` neither compiles a graph nor imports
chromadb::

    from memchat import MemChat, build_graph, Settings, Context

Layers (each imports only downward; see docs/architecture.md): interfaces (``memchat.cli``, ``memchat.server``,
``memchat.bench``) -> facade (``memchat.chat``) -> graph wiring (``memchat.graph``) -> nodes (``memchat.nodes``)
-> domain logic (``memchat.memory``, no I/O) and backends (``memchat.backends``) -> ``memchat.settings``,
``memchat.prompts``. In a checkout ``memchat/graph`` … are symlinks to the top-level folders; an installed
package maps them with setuptools ``package-dir``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memchat.chat import MemChat, TurnResult
    from memchat.graph.builder import build_graph
    from memchat.memory.state import Context, State
    from memchat.settings import Settings, get_settings

_EXPORTS = {
    "MemChat": "memchat.chat", "TurnResult": "memchat.chat", "build_graph": "memchat.graph.builder",
    "Settings": "memchat.settings", "get_settings": "memchat.settings", "Context": "memchat.memory.state",
    "State": "memchat.memory.state",
}
__all__ = ["Context", "MemChat", "Settings", "State", "TurnResult", "build_graph", "get_settings"]


def __getattr__(name: str) -> Any:
    """Import a public name on first use."""
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'memchat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
