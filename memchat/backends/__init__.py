"""Backends: LLM client and local llama.cpp server, embeddings, vector stores, persistence, the engine."""
