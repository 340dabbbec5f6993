"""memchat memory for LangChain 1.x agents: ``create_agent(model, tools, middleware=[MemchatMiddleware()])``.

* ``before_agent`` (once per turn): extract → slots → summarize-if-due → retrieve for the new user message
  and plan the turn's prefix-stable prompt (memchat's own nodes, :mod:`memchat.graph.memory_steps`);
* ``wrap_model_call`` (every model call of the turn, tool loop included): the model sees the planned prompt
  (frozen head with slots and L2, L1 lines, verbatim L0 turns, memory block + new message) followed by the
  turn's tool calls and results in order, so each call's prompt extends the previous one;
* ``after_agent``: the turn's messages and tool results go to vector memory (idempotent ids), the slot
  audit log and profile to the agent's store, and the thread's memory state is committed.

The memory state lives in the agent's state (``memchat``), so the agent's checkpointer saves it. It is
committed only when the agent finishes: a failed model or tool call changes no memory, and the next turn
drops what the failed one left in ``messages``.
"""

from __future__ import annotations

from typing import Annotated, Any, NotRequired

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langchain.agents.middleware.types import OmitFromInput, PrivateStateAttr
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, RemoveMessage
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_config
from langgraph.runtime import Runtime

from memchat.backends.engine import Engine, shared_engine
from memchat.graph.memory_steps import (
    apply_update,
    finish,
    plan_prompt,
    prepare,
    to_messages,
    turn_messages,
    with_turn,
)
from memchat.settings import Settings, get_settings

__all__ = ["MemchatAgentState", "MemchatMiddleware"]


class MemchatAgentState(AgentState[Any]):
    """The agent's state plus memchat's memory of the thread (committed) and of the running turn."""

    memchat: NotRequired[Annotated[dict[str, Any], OmitFromInput]]
    memchat_turn: NotRequired[Annotated[dict[str, Any] | None, PrivateStateAttr]]


def _text(m: AnyMessage) -> str:
    c = m.content
    return c if isinstance(c, str) else "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in c)


class MemchatMiddleware(AgentMiddleware[MemchatAgentState, Any, Any]):
    """Anchored slots, L1/L2 summaries and hybrid recall for any ``create_agent`` agent.

    ``settings``/``engine``: the same objects the rest of memchat uses (default: ``MEMCHAT_*``).
    The thread is ``configurable.thread_id``; the user ``configurable.user_id`` (else the thread's own
    scope). The agent's ``system_prompt`` is kept, in front of memchat's frozen head.
    """

    state_schema = MemchatAgentState

    def __init__(self, settings: Settings | None = None, *, engine: Engine | None = None) -> None:
        super().__init__()
        self.engine = engine or shared_engine(settings or get_settings())
        self.tools = []

    # ---- hooks -----------------------------------------------------------------------------
    def before_agent(self, state: MemchatAgentState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Run the memory steps for the new user message and plan the turn's prompt."""
        msgs = list(state.get("messages") or [])
        if not msgs or not isinstance(msgs[-1], HumanMessage):
            return None
        config = self._config()
        mem = dict(state.get("memchat") or {})
        human = msgs[-1]
        turn = int(mem.get("turn") or 0) + 1
        tid = str(config["configurable"]["thread_id"])
        sub = dict(mem, messages=list(mem.get("messages") or []) +
                   [HumanMessage(content=_text(human), id=f"user:{tid}:{turn}")])
        sub = prepare(sub, config, self.engine, runtime.store)
        plan = plan_prompt(sub, config, self.engine)
        update: dict[str, Any] = {"memchat_turn": {"state": sub, "plan": plan, "human_id": human.id}}
        stale = self._leftovers(msgs, mem.get("last_id"))
        if stale:  # a failed turn's messages (its memory was never committed)
            update["messages"] = [RemoveMessage(id=str(m.id)) for m in stale]
        return update

    def wrap_model_call(self, request: ModelRequest[Any],
                        handler: Any) -> ModelResponse[Any] | AIMessage:
        """Every model call of the turn sees the planned prompt + the turn's tool calls and results."""
        return handler(self._request(request))  # type: ignore[no-any-return]

    async def awrap_model_call(self, request: ModelRequest[Any],
                               handler: Any) -> ModelResponse[Any] | AIMessage:
        """Async :meth:`wrap_model_call`."""
        return await handler(self._request(request))  # type: ignore[no-any-return]

    def after_agent(self, state: MemchatAgentState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Write the turn to memory and commit the thread's memory state."""
        pending = state.get("memchat_turn")
        if not pending:
            return None
        msgs = list(state.get("messages") or [])
        turn = turn_messages(msgs, pending.get("human_id"))
        reply = next((m for m in reversed(turn) if isinstance(m, AIMessage)), None)
        if reply is None:
            return None
        config = self._config()
        sub = pending["state"]
        done = finish(sub, config, self.engine, runtime.store, pending["plan"], reply, turn[:-1])
        mem = apply_update(sub, done)
        mem["last_id"] = msgs[-1].id
        return {"memchat": mem, "memchat_turn": None}

    # ---- helpers ---------------------------------------------------------------------------
    def _request(self, request: ModelRequest[Any]) -> ModelRequest[Any]:
        pending: Any = request.state.get("memchat_turn")
        if not pending:
            return request
        system = request.system_message.text if request.system_message is not None else None
        prompt = to_messages(pending["plan"], system)
        msgs = with_turn(self.engine, prompt, turn_messages(request.messages, pending.get("human_id")))
        return request.override(messages=msgs, system_message=None)  # type: ignore[arg-type]

    def _config(self) -> RunnableConfig:
        conf = dict((get_config() or {}).get("configurable") or {})
        conf.setdefault("thread_id", "default")
        return {"configurable": conf}

    @staticmethod
    def _leftovers(msgs: list[AnyMessage], last_id: str | None) -> list[AnyMessage]:
        if not last_id:
            return []
        idx = next((i for i, m in enumerate(msgs) if m.id == last_id), None)
        return [] if idx is None else msgs[idx + 1:-1]
