"""Slot operations: what extraction produces and update_slots applies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# set: a new value; correct: supersede (one of several, when ``old`` or similarity names it);
# retract: the user negates or withdraws it; complete: a task is finished or dropped; forget: erase
OPS = ("set", "correct", "retract", "complete", "forget")


@dataclass
class Candidate:
    """A typed slot operation with the text that supports it (its evidence span)."""

    kind: str  # instruction | preference | fact | task | forget
    key: str  # "fact:name", "fact:order_number", "instruction:tone", "task:current", "*" (forget all)
    value: str
    evidence: str
    source: str = "user"
    op: str = "set"
    old: str = ""  # the value a correction or retraction names, when it names one

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for the state."""
        out = dict(kind=self.kind, key=self.key, value=self.value, evidence=self.evidence, source=self.source,
                   op=self.op)
        if self.old:
            out["old"] = self.old
        return out


def clean(v: str) -> str:
    """Trim quotes, spaces and trailing punctuation of a value span."""
    return v.strip().strip("\"'“”‘’「」 ").rstrip("。.!！,，;；:：").strip()
