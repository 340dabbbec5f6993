"""A chat completions request, validated and planned (:class:`ChatPlan`), and how its answer ended
(:class:`Outcome`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from memchat.chat import MemChat, TurnResult
from memchat.server.admission import idempotency_key
from memchat.server.history import request_context
from memchat.server.schemas import (
    SYSTEM_ROLES,
    USER_REQUIRED,
    APIError,
    ChatCompletionRequest,
    check_id,
    check_text,
    message_text,
    usage_block,
)
from memchat.server.stateless import StatelessResult
from memchat.settings import Settings


@dataclass
class ChatPlan:
    """A validated chat request: where it goes and what it sends."""

    req: ChatCompletionRequest
    thread_id: str | None
    user_id: str | None
    persona: str | None
    message: str
    history: list[tuple[str, str]]
    llm_params: dict[str, Any]
    idempotency_key: str | None = None  # with a thread: a retry with the same key replays the stored result
    context: str | None = None


def plan_chat(req: ChatCompletionRequest, request: Request, settings: Settings) -> ChatPlan:
    """Validate the request (400/413) and split it into persona, history and the new message."""
    if req.n is not None and req.n > 1:
        raise APIError(400, "n > 1 is not supported: memchat produces one reply per turn", param="n")
    if req.tools or req.functions:
        raise APIError(400, "tools / function calling are not supported", param="tools")
    thread_id = check_id(request.headers.get("x-thread-id") or req.thread_id, "thread_id")
    user_id = check_id(req.user or request.headers.get("x-user-id"), "user")
    if settings.require_user and not user_id:
        raise APIError(400, USER_REQUIRED, param="user", code="user_required")
    check_text(req.model, "model")
    for stop in ([req.stop] if isinstance(req.stop, str) else req.stop or []):
        check_text(stop, "stop")
    texts = []
    for i, m in enumerate(req.messages):
        text = check_text(message_text(m, i), f"messages[{i}].content")
        if len(text) > settings.max_request_chars:
            raise APIError(413, f"messages[{i}] has {len(text)} characters; the limit is "
                                f"{settings.max_request_chars} (MEMCHAT_MAX_REQUEST_CHARS)",
                           param=f"messages.{i}.content", code="message_too_long")
        texts.append((m.role, text))
    last_user = max((i for i, (role, _) in enumerate(texts) if role == "user"), default=-1)
    if last_user < 0:
        raise APIError(400, "messages must contain a user message", param="messages")
    message = texts[last_user][1]
    if not message.strip():
        raise APIError(400, "the last user message is empty", param=f"messages.{last_user}.content")
    lead = 0
    while lead < len(texts) and texts[lead][0] in SYSTEM_ROLES:
        lead += 1
    persona = "\n\n".join(t for _, t in texts[:lead] if t.strip()) or None
    history: list[tuple[str, str]] = [(r, t) for r, t in texts[lead:last_user] if r not in SYSTEM_ROLES]
    context = request_context(req, texts, lead)  # later system messages: this request's tail only
    return ChatPlan(req, thread_id, user_id, persona, message, history, req.llm_params(),
                    idempotency_key=idempotency_key(request.headers), context=context)


@dataclass
class Outcome:
    """How an answer ended: usage, cached tokens, finish reason and memchat details."""

    reply: str
    usage: dict[str, Any]
    finish: str
    extra: dict[str, Any]
    receipt: dict[str, Any] | None = None  # the stored completion id / created of a replayed turn


def _finish_reason(completion_tokens: int, plan: ChatPlan, settings: Settings) -> str:
    cap = plan.llm_params.get("max_tokens") or settings.llm_max_tokens
    return "length" if completion_tokens >= int(cap) else "stop"


def outcome(item: TurnResult | StatelessResult, plan: ChatPlan, mc: MemChat, extra: dict[str, Any]) -> Outcome:
    usage = item.usage or {}
    prompt = usage.get("input_tokens")
    completion = usage.get("output_tokens")
    if prompt is None:  # the backend reported no usage: count with our tokenizer
        sections = item.context.get("sections", {}) if isinstance(item, TurnResult) else extra.get("sections", {})
        prompt = int(sections.get("total") or 0)
    if completion is None:
        completion = mc.engine.tokenizer.count(item.reply) if item.reply else 0
    if isinstance(item, TurnResult):
        ctx = item.context
        extra = {"thread_id": item.thread_id, "turn": item.turn, "prefix_reuse": ctx.get("prefix_reuse"),
                 "sections": ctx.get("sections"), "dropped_turns": ctx.get("dropped_turns"),
                 "retrieved": len(ctx.get("retrieved_ids") or [])}
    receipt = item.receipt if isinstance(item, TurnResult) and item.replayed else None
    if receipt is not None:
        extra["replayed"] = True
    return Outcome(item.reply, usage_block(int(prompt), int(completion), item.cached_tokens),
                   _finish_reason(int(completion), plan, mc.settings), extra, receipt)
