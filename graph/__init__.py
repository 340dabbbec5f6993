"""memchat: long-term memory for multi-turn LLM chat, as a LangGraph graph."""

from graph.builder import build_graph, graph
from graph.settings import Settings, get_settings
from graph.state import State

__all__ = ["graph", "build_graph", "Settings", "get_settings", "State"]
