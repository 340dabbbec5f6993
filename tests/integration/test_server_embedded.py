"""The server on the real embedded llama.cpp model (no MEMCHAT_LLM_BASE_URL): one streamed request."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from memchat.server.app import create_app
from memchat.settings import Settings
from tests.support.serving import serve_app

pytestmark = pytest.mark.e2e


def test_streamed_reply_from_the_embedded_model(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", llm_base_url="", llm_max_tokens=32,
                        _env_file=None)  # type: ignore[call-arg]
    with serve_app(create_app(settings), timeout=300) as base:  # the startup probe starts llama.cpp
        health = httpx.get(f"{base}/health").json()
        assert health["status"] == "ok", health
        assert health["backend"]["kind"] == "embedded" and health["backend"]["context_length"] == settings.local_n_ctx
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=180)
        stream = client.chat.completions.create(
            model="memchat", messages=[{"role": "user", "content": "My name is Li Ming. Say hello to me."}],
            stream=True, stream_options={"include_usage": True}, extra_headers={"X-Thread-ID": "embedded"})
        chunks = list(stream)
        reply = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert reply.strip()
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        mem = httpx.get(f"{base}/v1/threads/embedded/memory").json()
        assert mem["turns"] == 1 and mem["recent_turns"][0]["assistant"] == reply
