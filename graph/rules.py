"""Fast extraction rules (zero LLM calls) for explicit statements in English and Chinese."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from graph.textproc import has_cjk

KINDS = ("instruction", "preference", "fact", "task")
_END = r"(?=[。．.!！?？;；,，\n]|$)"
_I = re.IGNORECASE


@dataclass
class Candidate:
    """A typed memory candidate with the text that supports it."""

    kind: str  # instruction | preference | fact | task | memory (free fact for vector memory)
    key: str
    value: str
    evidence: str
    source: str = "user"

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for the state."""
        return dict(kind=self.kind, key=self.key, value=self.value, evidence=self.evidence, source=self.source)


def _clean(v: str) -> str:
    return v.strip().strip("\"'“”‘’「」 ").rstrip("。.!！,，;；")


# (kind, key, pattern) — the value is group "v"
FACT_RULES: list[tuple[str, str, re.Pattern[str]]] = [
    ("fact", "name", re.compile(r"\b(?i:my name(?: is|'s)\s+(?:actually\s+)?)(?P<v>[A-Z][\w\-']*(?:\s+[A-Z][\w\-']*){0,3})", 0)),
    ("fact", "name", re.compile(r"\b(?i:call me|i am called|i'm called)\s+(?P<v>[A-Z][\w\-']*(?:\s+[A-Z][\w\-']*){0,2})", 0)),
    ("fact", "name", re.compile(r"我(?:的名字)?(?:其实)?(?:是|叫)(?:做)?(?P<v>[\u4e00-\u9fff]{2,4}|[A-Z][a-z]+(?: [A-Z][a-z]+)?)" + _END)),
    ("fact", "name", re.compile(r"我的名字(?:其实)?(?:是|叫)\s*(?P<v>[^\s，。,.!！?？]{1,20})")),
    ("fact", "order_number", re.compile(r"\border\s*(?:number|no\.?|#|id)\s*(?:is|:)?\s*(?:actually\s+)?(?P<v>#?[A-Za-z0-9][\w\-…\.]*\w)", _I)),
    ("fact", "order_number", re.compile(r"订单(?:号|编号)(?:码)?(?:其实|应该)?(?:是|为|:|：)?\s*(?P<v>#?[A-Za-z0-9…\.][\w\-…\.]*\w)")),
    ("fact", "allergy", re.compile(r"\bi(?:'m| am) allergic to\s+(?P<v>[^.!?\n,;]+?)(?=\s+and\s|[.!?\n,;]|$)", _I)),
    ("fact", "allergy", re.compile(r"我对(?P<v>[^，。,.!！]{1,20})过敏")),
    ("fact", "location", re.compile(r"\b(?i:i (?:live|reside) in)\s+(?P<v>[A-Z][\w\- ]{1,40}?)(?=\s+and\s|\s+but\s|[。．.!！?？;；,，\n]|$)")),
    ("fact", "location", re.compile(r"我住在(?P<v>[^，。,.!！]{1,20})")),
    ("fact", "email", re.compile(r"\bmy e-?mail(?: address)? is\s+(?P<v>[\w.+-]+@[\w-]+\.[\w.-]+)", _I)),
    ("fact", "phone", re.compile(r"(?:\bmy phone(?: number)? is|我的(?:电话|手机)(?:号码)?是)\s*(?P<v>\+?[\d][\d\- ]{5,}\d)", _I)),
    ("fact", "birthday", re.compile(r"\bmy birthday is\s+(?P<v>[^.!?\n,;]+)", _I)),
    ("fact", "occupation", re.compile(r"\bi work as (?:an? )?(?P<v>[^.!?\n,;]+)", _I)),
    ("fact", "occupation", re.compile(r"我是一名(?P<v>[^，。,.!！]{1,20})")),
]

TASK_RULES: list[re.Pattern[str]] = [
    re.compile(r"\bi(?:'m| am) (?:currently |now )?(?:working on|writing|drafting|preparing|building|planning)\s+(?P<v>[^.!?\n]+)", _I),
    re.compile(r"\b(?:help me|i need to|i want to) (?:write|draft|prepare|plan|finish|build)\s+(?P<v>[^.!?\n]+)", _I),
    re.compile(r"(?:我)?(?:正在|在)(?:撰写|写|准备|做|规划|策划)(?P<v>[^，。,.!！?？]{2,40})"),
    re.compile(r"帮我(?:写|撰写|准备|规划)(?P<v>[^，。,.!！?？]{2,40})"),
]

INSTRUCTION_RULES: list[re.Pattern[str]] = [
    re.compile(r"\b(?:please\s+)?(?:always\s+)?(?:answer|respond|reply|write|talk|speak)\s+(?:to me\s+)?(?P<v>(?:in|with|using)\s+[^.!?\n]+)", _I),
    re.compile(r"\b(?:from now on|going forward|in future),?\s+(?P<v>[^.!?\n]+)", _I),
    re.compile(r"\balways\s+(?P<v>(?:use|answer|respond|reply|keep|be|include|write)\s+[^.!?\n]+)", _I),
    re.compile(r"请(?:用|以|使用)(?P<v>[^，。,.!！?？]{1,30})(?:回答|回复|答复|交流|写)"),
    re.compile(r"(?:以后|今后|之后)(?:请)?(?P<v>[^，。,.!！?？]{2,40})"),
]

PREFERENCE_RULES: list[tuple[bool, re.Pattern[str]]] = [
    (True, re.compile(r"\b(?:please\s+)?(?:don't|do not|never)\s+(?:use|include|add|write)\s+(?P<v>[^.!?\n,;]+)", _I)),
    (True, re.compile(r"\bno\s+(?P<v>abbreviations|emojis?|jargon|acronyms|markdown|bullet points)\b", _I)),
    (True, re.compile(r"\bi (?:don't|do not) (?:like|want)\s+(?P<v>[^.!?\n,;]+)", _I)),
    (False, re.compile(r"\bi (?:prefer|like|love|enjoy|want)\s+(?P<v>[^.!?\n,;]+)", _I)),
    (True, re.compile(r"(?:请)?(?:不要|别|不许|禁止)(?:使用|用|加|写)?(?P<v>[^，。,.!！?？]{1,20})")),
    (True, re.compile(r"我不(?:喜欢|想要)(?P<v>[^，。,.!！?？]{1,20})")),
    (False, re.compile(r"我(?:更)?(?:喜欢|偏好|爱)(?P<v>[^，。,.!！?？]{1,20})")),
]

_TOPIC_KEYS = [
    ("tone", re.compile(r"tone|voice|formal|casual|professional|friendly|口吻|语气|正式|专业|随意")),
    ("language", re.compile(r"english|chinese|mandarin|spanish|french|german|japanese|language|中文|英文|英语|汉语|日语|语言")),
    ("format", re.compile(r"bullet|markdown|table|json|list|format|格式|列表|表格")),
    ("length", re.compile(r"short|brief|concise|long|detail|length|words|简短|简洁|详细|字数")),
]
_ABBREV = re.compile(r"abbreviation|acronym|缩写|简写")
FORGET = re.compile(r"\b(?:forget|delete|remove)\s+my\s+(?P<v>[\w ]+?)" + _END + r"|(?:忘记|删除)我的(?P<z>[^，。,.!！]{1,10})", _I)
_SKIP_TASK = re.compile(r"^(?:on it|it|this|that|something|a bit)$", _I)


def _topic_key(text: str) -> str | None:
    low = text.lower()
    for key, pat in _TOPIC_KEYS:
        if pat.search(low):
            return key
    return None


def _pref_key(value: str) -> str:
    if _ABBREV.search(value.lower()):
        return "abbreviations"
    topic = _topic_key(value)
    if topic:
        return topic
    words = re.findall(r"[a-z0-9]+|[\u4e00-\u9fff]{1,4}", value.lower())
    return "_".join(words[:3]) or "general"


def sentences(text: str) -> list[str]:
    """Split into sentences (English and Chinese punctuation)."""
    parts = re.split(r"(?<=[.!?;])\s+|(?<=[。！？；])\s*|\n+", text)
    return [p.strip() for p in parts if p and p.strip()]


def extract_rules(text: str, source: str = "user") -> list[Candidate]:
    """Typed candidates from explicit statements. ``source`` = who said it."""
    out: list[Candidate] = []
    seen: set[str] = set()

    def add(kind: str, key: str, value: str, evidence: str) -> None:
        value = _clean(value)
        if not value or len(value) > 200:
            return
        full = f"{kind}:{key}"
        if full in seen:
            return
        seen.add(full)
        out.append(Candidate(kind=kind, key=full, value=value, evidence=evidence, source=source))

    for sent in sentences(text):
        for kind, key, pat in FACT_RULES:
            m = pat.search(sent)
            if m:
                add(kind, key, m.group("v"), sent)
        if source != "user":
            continue  # instructions, preferences and tasks come only from the user
        for pat in TASK_RULES:
            m = pat.search(sent)
            if m and not _SKIP_TASK.match(_clean(m.group("v"))):
                add("task", "current", m.group("v"), sent)
                break
        for pat in INSTRUCTION_RULES:
            m = pat.search(sent)
            if m:
                value = m.group("v")
                if re.match(r"^(?:in|with|using)\s", value, _I) or has_cjk(value):
                    value = sent
                key = _topic_key(value) or "general"
                add("instruction", key, sent if key == "general" else value, sent)
                break
        for negative, pat in PREFERENCE_RULES:
            m = pat.search(sent)
            if m:
                if any(c.kind == "instruction" and c.evidence == sent for c in out) and not _ABBREV.search(sent):
                    break
                add("preference", _pref_key(m.group("v")), sent if negative else m.group("v"), sent)
                break
    return out


def forget_requests(text: str) -> list[str]:
    """Slot names the user asked to forget ("forget my order number" -> ["order number"])."""
    return [(_clean(m.group("v") or m.group("z") or "")) for m in FORGET.finditer(text)]


_FIRST_PERSON = re.compile(r"\b(?:i|i'm|i've|i'd|my|me|we|our)\b|我", _I)


def free_facts(text: str) -> list[str]:
    """First-person declarative sentences worth storing as facts in vector memory."""
    out = []
    for s in sentences(text):
        if s.endswith(("?", "？")) or len(s) < 8:
            continue
        if _FIRST_PERSON.search(s):
            out.append(s)
    return out[:5]
