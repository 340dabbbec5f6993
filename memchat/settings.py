"""Typed settings for memchat: one object, env prefix ``MEMCHAT_``, ``.env`` support."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All memchat knobs. Every backend switch (embedded vs production) is a setting here."""

    model_config = SettingsConfigDict(env_prefix="MEMCHAT_", env_file=".env", extra="ignore")

    # --- LLM -------------------------------------------------------------------------------
    llm_base_url: str = Field("", description="OpenAI-compatible base URL; empty = embedded llama.cpp server")
    llm_model: str = Field("", description="Model name sent to the server; empty = what the server serves")
    llm_api_key: SecretStr = Field(SecretStr("EMPTY"), description="API key of the LLM server")
    llm_timeout: float = Field(60.0, gt=0, description="Seconds before an LLM call fails")
    llm_max_retries: int = Field(1, ge=0, description="Retries of a failed LLM call")
    llm_temperature: float = Field(0.3, ge=0, le=2)
    llm_max_tokens: int = Field(256, gt=0, description="Default reply length cap (tokens)")
    llm_fold_system: bool = Field(False, description="Fold the system prompt into the first user message")
    llm_stop: list[str] = Field(default_factory=list, description="Extra stop sequences")
    local_model: str = Field("", description="GGUF path for the embedded server; empty = shipped Gemma 3 270M")
    local_n_ctx: int = Field(8192, gt=0, description="Context window of the embedded server")
    local_threads: int = Field(0, ge=0, description="Threads of the embedded server; 0 = all cores")
    local_chat_format: str = Field("memchat-transcript", description="llama.cpp chat format of the embedded server")
    local_startup_timeout: float = Field(120.0, gt=0)

    # --- storage -----------------------------------------------------------------------------
    data_dir: Path = Field(Path(".memchat"), description="Where checkpoints, vectors and the model live")
    checkpoint_url: str = Field("", description="SQLite path or postgresql:// URL; empty = <data_dir>/checkpoints.sqlite")
    chroma_url: str = Field("", description="Chroma server http://host:port; empty = embedded persistent store")
    chroma_collection: str = Field("memchat", description="Chroma collection name")
    vector_store: Literal["chroma", "milvus"] = Field("chroma", description="Vector memory backend")
    milvus_uri: str = Field("", description="Milvus Lite file path or http://host:19530; empty = <data_dir>/milvus.db")
    milvus_token: SecretStr = Field(SecretStr(""), description="Milvus token (user:password or API key)")
    milvus_collection: str = Field("memchat", description="Milvus collection name")
    milvus_index: str = Field("", description="Dense index type; empty = FLAT on Milvus Lite, HNSW on a server")
    milvus_search: Literal["auto", "server", "process"] = Field(
        "auto", description="Where Milvus memories are searched; auto = in process for a Lite file, else in Milvus")
    embedding_model: str = Field("", description="sentence-transformers id or path; empty = shipped all-MiniLM-L6-v2")
    embedding_query_prefix: str | None = Field(None, description="Query prefix; None = automatic (BGE family)")
    embedding_device: str = Field("cpu")
    embedding_backend: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="Forward pass of live turns' embeddings: auto = ONNX Runtime on CPU with more than "
        "one worker process (when it gives the same vectors as PyTorch), else PyTorch")
    tokenizer: str = Field("", description="tokenizer.json path or HF id; empty = Qwen's shipped tokenizer")

    # --- memory --------------------------------------------------------------------------------
    persona: str = Field("You are a helpful, precise assistant.", description="Default system persona")
    max_input_tokens: int = Field(32768, gt=256, description="Hard cap of the prompt plus reserve")
    generation_reserve: int = Field(1024, ge=16, description="Tokens kept free for the reply")
    memory_tokens: int = Field(3000, ge=0, description="Cap of the retrieved-memory section")
    max_message_tokens: int = Field(8000, gt=16, description="Longer user messages are truncated with a marker")
    l0_turns: int = Field(5, ge=1, description="Verbatim turns kept; L0 is compacted when it reaches 2x this")
    l2_threshold: int = Field(20, ge=1, description="Turns folded from L1 into the L2 JSON at once")
    memory_turn_tokens: int = Field(400, ge=0, description="New recalled memory per statement turn; "
                                    "0 = memory_tokens / l0_turns")
    memory_ask_tokens: int = Field(0, ge=0, description="New recalled memory for a message that asks something; "
                                   "0 = memory_tokens")
    memory_top_k: int = Field(30, ge=0, description="Ranked hits considered per query (before neighbours)")
    memory_candidates: int = Field(50, ge=1, description="Candidates fetched from each retriever")
    memory_neighbours: int = Field(2, ge=0, description="Adjacent turns added around a hit")
    memory_cache_docs: int = Field(100_000, ge=1, description="Memories held in process for search (all users "
                                   "together, least recently used users dropped; ~2.5 KB each)")
    memory_min_score: float = Field(0.2, description="Dense cosine floor for a hit found only by dense search")
    llm_extraction: Literal["auto", "true", "false"] = Field(
        "auto", description="LLM tier of slot extraction (a second call after the reply) and LLM facts at compaction: "
        "auto = on for a remote MEMCHAT_LLM_BASE_URL, off for the embedded model; true; false")
    ttl_turns_task: int = Field(40, ge=0, description="Turns without mention before a task expires (0 = never)")
    ttl_turns_fact: int = Field(0, ge=0)
    ttl_turns_instruction: int = Field(0, ge=0)
    ttl_turns_preference: int = Field(0, ge=0)
    ttl_seconds_task: float = Field(7 * 24 * 3600, ge=0, description="Age before a task expires (0 = never)")
    ttl_seconds_other: float = Field(0, ge=0)

    # --- server ----------------------------------------------------------------------------------
    api_key: SecretStr | None = Field(None, description="When set, the HTTP API needs Bearer auth")
    max_request_chars: int = Field(200_000, gt=0, description="Longest accepted message (characters)")
    allowed_hosts: str = Field("", description="Comma-separated Host names the server answers to besides "
                               "loopback (name, name:port, .suffix, *); see server/guard.py")
    require_user: bool = Field(False, description="Refuse chat requests without a user id (400)")
    thread_wait: float = Field(60.0, gt=0, description="Seconds a request waits for its busy thread before 409")
    turn_timeout: float = Field(0.0, ge=0, description="Seconds a whole turn may take (lock wait, LLM calls and "
                                "their retries, checkpoint); past it the client gets 504 turn_timeout and the "
                                "thread is unchanged; 0 = no limit")
    store_timeout: float = Field(5.0, gt=0, description="Seconds a request waits for a connection to the "
                                 "checkpoint database (or a health probe for a store) before 503")
    lease_ttl: float = Field(6.0, gt=0, description="Seconds before the thread lease of a dead replica expires "
                             "(renewed every third of it while held)")
    thread_queue: int = Field(4, ge=0, description="Requests that may wait for one busy thread; more get 409 at once")
    idempotency_keys: int = Field(20, ge=1, description="Idempotency keys remembered per thread (the last N)")
    checkpoint_keep: int = Field(8, ge=0, description="Checkpoints kept per thread (the last K: rollback, crash "
                                 "recovery, the inspector); 0 = keep every checkpoint")
    history_on_existing_thread: Literal["reject", "ignore"] = Field(
        "reject", description="Earlier messages sent to an existing thread: 400 (reject) or ignore with a warning header")
    background_summaries: bool = Field(True, description="Compute the next compaction's summary after the reply")
    api_keys_file: Path | None = Field(None, description="Tenant keys (hashed) and the users each may act for; "
                                       "managed with `memchat keys`, re-read when it changes")
    workers: int = Field(1, ge=1, description="`memchat serve` processes on one port; more than 1 needs an LLM "
                         "server; an embedded Chroma store is served to them by a Chroma server serve starts")
    login_max_failures: int = Field(5, ge=0, description="Failed /login attempts per client address and minute "
                                    "before 429 (per process; 0 = unlimited)")

    @field_validator("llm_base_url")
    @classmethod
    def _strip_url(cls, v: str) -> str:
        return v.strip().rstrip("/")

    @field_validator("llm_extraction", mode="before")
    @classmethod
    def _extraction_mode(cls, v: object) -> object:
        """Old boolean values still work (``true``/``1``/``yes``/``on``, ``false``/``0``/``no``/``off``)."""
        if isinstance(v, bool):
            return "true" if v else "false"
        text = str(v).strip().lower()
        return {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false",
                "": "auto"}.get(text, text)

    @property
    def extraction_enabled(self) -> bool:
        """Whether the LLM extraction tier runs (``auto``: only against a remote backend)."""
        mode = self.llm_extraction
        if isinstance(mode, bool):  # set with model_copy(update=...), which skips validation
            return mode
        return mode == "true" or (mode == "auto" and not self.embedded)

    @property
    def summaries_in_background(self) -> bool:
        """Whether summaries are computed after the reply: against a remote backend only (the embedded llama.cpp
        server answers one request at a time, so a background call only queues before the next turn's)."""
        return bool(self.background_summaries) and not self.embedded

    @property
    def embedded(self) -> bool:
        """True when memchat runs its own llama.cpp server."""
        return not self.llm_base_url

    @property
    def prompt_limit(self) -> int:
        """Most tokens the prompt may have."""
        limit = self.max_input_tokens
        if self.embedded:
            limit = min(limit, self.local_n_ctx)
        return max(64, limit - self.generation_reserve)

    @property
    def turn_memory_budget(self) -> int:
        """Tokens of newly recalled memory one turn may add (the window's blocks stay until compaction)."""
        return min(self.memory_tokens, self.memory_turn_tokens or max(1, self.memory_tokens // self.l0_turns))

    @property
    def ask_memory_budget(self) -> int:
        """Tokens of newly recalled memory for a message that asks something (a question, a recall request)."""
        return min(self.memory_tokens, max(self.turn_memory_budget, self.memory_ask_tokens or self.memory_tokens))

    def ttl_turns(self, kind: str) -> int:
        """Turn-based expiry for a slot kind (0 = never)."""
        return int(getattr(self, f"ttl_turns_{kind}", 0))

    def ttl_seconds(self, kind: str) -> float:
        """Time-based expiry for a slot kind (0 = never)."""
        return self.ttl_seconds_task if kind == "task" else self.ttl_seconds_other


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment (cached)."""
    return Settings()
