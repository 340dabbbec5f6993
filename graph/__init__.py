"""Graph wiring (``memchat.graph``): the one ``build_graph``; ``graph`` is the compiled graph for ``langgraph dev``.

Both are imported lazily, so importing a sibling module does not compile a graph.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memchat.graph.builder import build_graph, graph

__all__ = ["build_graph", "graph"]


def __getattr__(name: str) -> Any:
    """``build_graph`` and ``graph`` from :mod:`memchat.graph.builder`, on first use."""
    if name in __all__:
        return getattr(import_module("memchat.graph.builder"), name)
    raise AttributeError(f"module 'memchat.graph' has no attribute {name!r}")
