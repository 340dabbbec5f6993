"""Server-sent events framing of a chat completion stream (OpenAI chunks, then ``[DONE]``)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from memchat.server.chat_plan import ChatPlan, Outcome
from memchat.server.errors import api_error
from memchat.server.schemas import (
    chunk_body,
)


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, default=str)
    return f"data: {text}\n\n".encode()


async def stream_completion(first: str | Outcome, items: AsyncGenerator[str | Outcome, None], plan: ChatPlan, cid: str,
                  model: str, created: int) -> AsyncIterator[bytes]:
    with_usage = plan.req.include_usage()
    yield sse(chunk_body(cid, created, model, {"role": "assistant", "content": ""}, with_usage_field=with_usage))
    try:
        item = first
        while True:
            if isinstance(item, str):
                yield sse(chunk_body(cid, created, model, {"content": item}, with_usage_field=with_usage))
            else:
                if item.receipt and item.reply:  # a replayed turn: its stored reply in one piece
                    yield sse(chunk_body(cid, created, model, {"content": item.reply}, with_usage_field=with_usage))
                yield sse(chunk_body(cid, created, model, {}, item.finish, with_usage_field=with_usage))
                if with_usage:
                    yield sse(chunk_body(cid, created, model, None, usage=item.usage))
                break
            item = await anext(items)
    except StopAsyncIteration:
        pass
    except Exception as exc:  # headers are gone: report the error in the stream
        err = api_error(exc, plan.thread_id)
        yield sse(err.body())
    finally:
        await items.aclose()
    yield sse("[DONE]")
