"""The LLM tier's slot operations: their JSON schema, and the checks each must pass before it is applied.

An operation is kept only when its evidence is copied from the user's own message, its value (for set and
correct) is copied from that evidence, and the sentence it comes from passes the rules tier's guards
(no question, hypothetical, quote, reported speech or other person). The assistant's reply and recalled
memories are in the prompt but never ground anything: only the user's message is searched.
"""

from __future__ import annotations

import json
import re
from typing import Any

from memchat.memory.rules import _POLITE, sentences
from memchat.memory.rules_guard import (
    before_condition,
    clauses,
    is_hypothetical,
    is_question,
    is_reported,
    normalize,
    strip_quotes,
    subject,
)
from memchat.memory.slot_ops import OPS, Candidate, clean

KINDS = ("fact", "preference", "instruction", "task")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
OPS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"operations": {"type": "array", "items": {
        "type": "object",
        "properties": {"op": {"type": "string", "enum": list(OPS)}, "kind": {"type": "string", "enum": list(KINDS)},
                       "key": {"type": "string"}, "value": {"type": "string"}, "evidence": {"type": "string"}},
        "required": ["op", "kind", "key", "value", "evidence"]}}},
    "required": ["operations"],
}


def parse_operations(text: str) -> list[dict[str, Any]]:
    """The operations of a reply; raises ``ValueError`` when it is not the JSON the schema asks for."""
    data = json.loads(text)
    ops = data.get("operations") if isinstance(data, dict) else None
    if not isinstance(ops, list) or not all(isinstance(o, dict) for o in ops):
        raise ValueError("the extraction reply has no list of operations")
    return ops


def _key(kind: str, key: str) -> str:
    name = key.strip().lower().split(":", 1)[-1]
    return re.sub(r"[\s\-]+", "_", name)


def _clause_ok(sent: str, ev: str) -> bool:
    """No clause the evidence touches is about someone else (subjects carry over, as in the rules tier)."""
    start = sent.find(ev)
    end, pos, subj = start + len(ev), 0, "1"
    for cl in clauses(sent):
        at = sent.find(cl, pos)
        pos = at + len(cl) if at >= 0 else pos
        subj = subject(cl) or subj
        if at >= 0 and at < end and at + len(cl) > start and subj == "3":
            return False
    return True


def _grounding(sentence: str, op: str) -> tuple[str, bool] | None:
    """The guards of the rules tier for one user sentence: the part of it that may ground ``op`` (quotes
    removed, a condition cut off) and whether it is a polite forget request; None when they leave nothing."""
    s = normalize(strip_quotes(sentence))
    if op == "forget" and is_question(s) and _POLITE.search(s):
        return None if is_reported(s) else (s, True)
    if is_hypothetical(s):
        s = before_condition(s)
    if not s or is_question(s) or is_hypothetical(s) or is_reported(s):
        return None
    return s, False


def _sentence_ok(sentence: str, piece: str, op: str) -> bool:
    """The guards of the rules tier, for the user sentence that holds ``piece`` of the evidence."""
    if piece not in normalize(strip_quotes(sentence)):
        return False  # the evidence is (partly) inside a quote
    got = _grounding(sentence, op)
    if got is None:
        return False
    s, polite_forget = got
    return polite_forget or (piece in s and _clause_ok(s, piece))


def might_state(user_text: str) -> bool:
    """False when no operation could pass :func:`check` for this message, whatever the model answers: every
    sentence is a question (other than a polite "can you forget …?"), or a hypothetical, reported or quoted one.
    The extraction call for such a message (a user who only asks) would be wasted, so it is not made."""
    return any(_grounding(sent, op) is not None for sent in sentences(normalize(user_text)) for op in ("forget", "set"))


def check(op: dict[str, Any], user_text: str) -> Candidate | None:
    """The operation as a candidate when it is well formed and grounded in the user's message, else None."""
    kind, verb = str(op.get("kind", "")), str(op.get("op", ""))
    value, ev = clean(str(op.get("value", ""))), normalize(str(op.get("evidence", "")))
    name = _key(kind, str(op.get("key", "")))
    if kind not in KINDS or verb not in OPS or not ev or not (_NAME.match(name) or (verb == "forget" and name == "*")):
        return None
    msg = normalize(user_text)
    if ev.lower() not in msg.lower() or len(value) > 200:
        return None
    if verb in ("set", "correct") and (not value or value.lower() not in ev.lower()):
        return None  # a value the user did not say
    at = msg.lower().find(ev.lower())
    ev = msg[at: at + len(ev)]  # the user's own spelling
    sents = [normalize(s) for s in sentences(msg)]
    for piece in (normalize(p) for p in sentences(ev)):
        if not any(piece in s and _sentence_ok(s, piece, verb) for s in sents):
            return None
    key = "*" if name == "*" else f"{kind}:{name}"
    return Candidate(kind="forget" if verb == "forget" else kind, key=key, value=value, evidence=ev, op=verb)
