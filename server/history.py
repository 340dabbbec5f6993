"""What a chat request carries besides the new message: per-request context and earlier history.

* **Per-request context**: ``system``/``developer`` messages that come after the first user or assistant
  message (the leading ones are the persona), and ``memchat.context`` in the body (``extra_body`` in the
  openai SDK). The text goes into the volatile tail of this request's prompt only: it is not the persona,
  not part of later prompts or of memory, and the cached head is untouched.
* **History on a thread**: earlier user/assistant messages sent with a thread id. For a thread that does
  not exist yet they are imported as its past turns (``X-Memchat-Imported: N``); for an existing thread
  they are refused with a 400, or with ``MEMCHAT_HISTORY_ON_EXISTING_THREAD=ignore`` ignored with an
  ``X-Memchat-Warning`` header. Never silently dropped. A retry of the importing request with the same
  ``Idempotency-Key`` is not refused: its turn is replayed from the stored receipt (the history was imported
  by the first attempt).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from memchat.chat import MemChat
from memchat.importer import ThreadExists, import_thread
from memchat.memory.receipts import key_hash
from memchat.server.schemas import SYSTEM_ROLES, APIError, ChatCompletionRequest, check_text

if TYPE_CHECKING:
    from memchat.server.chat_plan import ChatPlan

IMPORTED_HEADER = "X-Memchat-Imported"
WARNING_HEADER = "X-Memchat-Warning"


def request_context(req: ChatCompletionRequest, texts: Sequence[tuple[str, str]], lead: int) -> str | None:
    """This request's extra context: later system/developer messages, then ``memchat.context``."""
    parts = [text.strip() for role, text in texts[lead:] if role in SYSTEM_ROLES and text.strip()]
    extra = (req.memchat or {}).get("context")
    if extra is not None:
        if not isinstance(extra, str):
            raise APIError(400, "memchat.context must be a string", param="memchat.context")
        if extra.strip():
            parts.append(check_text(extra, "memchat.context").strip())
    return "\n\n".join(parts) or None


def prepare_thread(mc: MemChat, plan: ChatPlan) -> dict[str, str]:
    """Import the history into a new thread, or refuse / ignore it on an existing one; returns the
    response headers saying what happened."""
    tid = plan.thread_id
    if not tid or not plan.history:
        return {}
    try:
        n = import_thread(mc, tid, plan.history, user_id=plan.user_id, persona=plan.persona)
    except ThreadExists as exc:
        if plan.idempotency_key and _has_receipt(mc, tid, plan.idempotency_key):
            return {}  # a retry of a request that imported and answered: the turn replays its stored result
        earlier = len(plan.history)
        if mc.settings.history_on_existing_thread == "ignore":
            return {WARNING_HEADER: f"{earlier} earlier messages ignored: thread {tid} exists and keeps its own "
                                    "history"}
        raise APIError(400, f"{exc}: send only the new user message (the thread keeps the earlier {earlier} "
                            "messages itself), or use a new thread id to import them",
                       param="messages", code="history_on_existing_thread") from exc
    return {IMPORTED_HEADER: str(n)} if n else {}


def _has_receipt(mc: MemChat, thread_id: str, key: str) -> bool:
    """Whether the thread holds a result stored under the idempotency ``key``."""
    h = key_hash(key)
    return any(r.get("key") == h for r in mc.state(thread_id).get("receipts") or [])


def undo_import_on_failure(mc: MemChat, thread_id: str, items: Iterator[Any]) -> Iterator[Any]:
    """Run the first turn after an import; if it fails, forget the imported thread too, so that a
    retry of the same request imports again instead of being refused."""
    done = False
    try:
        yield from items
        done = True
    finally:
        if not done:
            mc.delete_thread(thread_id)
