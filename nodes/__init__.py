"""The five nodes of a memchat turn, one module each."""

from nodes.extract_facts import extract_facts
from nodes.respond import respond
from nodes.retrieve import retrieve
from nodes.summarize import should_summarize, summarize
from nodes.update_slots import update_slots

__all__ = ["extract_facts", "update_slots", "summarize", "should_summarize", "retrieve", "respond"]
