"""The five nodes of a memchat turn, one module each."""

from memchat.nodes.extract_facts import extract_facts
from memchat.nodes.respond import respond
from memchat.nodes.retrieve import retrieve
from memchat.nodes.summarize import should_summarize, summarize
from memchat.nodes.update_slots import update_slots

__all__ = ["extract_facts", "update_slots", "summarize", "should_summarize", "retrieve", "respond"]
