"""English instructions, preferences, tasks and forget requests -> slot operations."""

from __future__ import annotations

import re

from memchat.memory.rules_words import FORMAT_EN, LANG_EN, LENGTH_EN, STYLE_EN, TONE_EN, attr_keys
from memchat.memory.slot_ops import Candidate, clean

_I = re.I
_IMPERATIVE = re.compile(
    r"^(?:please\s+|kindly\s+|from now on,?\s+|going forward,?\s+|in future,?\s+|always\s+|"
    r"i (?:want|need|would like|'d like|prefer) (?:you to\s+)?|can you\s+|could you\s+|make sure (?:to|you)\s+)*"
    r"(?:answer|respond|reply|write|talk|speak|use|keep|be|make|give|format|stick|switch|stay|sound|"
    r"limit|avoid|don't|do not|never|no|only|try)\b", _I)
_RETRACT = re.compile(r"\b(?:drop|stop|ditch|skip|lose|cancel|scrap|no need for|no need to|no longer need|"
                      r"don't need|do not need|you can stop|never mind|no more|forget about|get rid of|"
                      r"not necessary|unnecessary)\b", _I)
_STYLE_OK = re.compile(r"\b(?P<n>\w+(?: \w+)?)\s+(?:is|are)\s+(?:fine|ok|okay|allowed|good|alright|welcome)\b|"
                       r"\b(?:you can|feel free to|go ahead and|it's fine to|it's ok to) use\s+(?P<m>[\w ]+)", _I)
_TASK_VERBS = ("working on|writing|drafting|preparing|planning|building|organi[sz]ing|designing|developing|"
               "studying for|researching|putting together|creating|editing|reviewing|translating|"
               "coding|finishing|trying to finish|working towards|getting ready for")
_DONE = re.compile(r"\b(?:i|we)(?:'ve| have)?\s+(?:finally\s+|just\s+|already\s+)*(?:finished|completed|submitted|"
                   r"sent off|sent out|handed in|turned in|wrapped up|delivered|published|shipped|gave up on|"
                   r"abandoned|dropped|cancel+ed)\s+(?P<v>[^,;.!?]*)|"
                   r"\b(?:i'm|i am|we're)\s+(?:finally\s+)?(?:done|finished|through) with\s+(?P<w>[^,;.!?]*)|"
                   r"(?P<x>\b(?:the|my|that|this|it|our)\b[^,;.!?]*?)\s*(?:is|'s|are|was)\s+(?:finally\s+|now\s+|all\s+)?"
                   r"(?:done|finished|complete|completed|over|submitted|sent|cancel+ed|off the table)\b|"
                   r"\bi(?:'m| am) (?:not|no longer) (?:working on|writing|doing)\s+(?P<y>[^,;.!?]+)", _I)


def _c(kind: str, key: str, value: str, ev: str, op: str = "set", old: str = "") -> Candidate:
    return Candidate(kind=kind, key=f"{kind}:{key}", value=clean(value), evidence=ev, op=op, old=old)


def _topics(cl: str) -> list[str]:
    out = []
    if re.search(rf"\b(?:{TONE_EN})\b|\btone\b|\bvoice\b", cl, _I):
        out.append("tone")
    if re.search(rf"\b(?:{LANG_EN})\b", cl, _I):
        out.append("language")
    if re.search(rf"\b(?:{FORMAT_EN})\b", cl, _I):
        out.append("format")
    if LENGTH_EN.search(cl) or re.search(r"\b(?:length|word limit|words)\b", cl, _I):
        out.append("length")
    return out


def _style(cl: str) -> str:
    low = cl.lower()
    return next((key for word, key in STYLE_EN.items() if word in low), "")


def instructions(cl: str) -> list[Candidate]:
    """Language, tone, format, length instructions; style preferences; and their withdrawal."""
    ok = _STYLE_OK.search(cl)
    if ok and (style := _style(ok.group(0))):
        return [_c("preference", style, ok.group(0), cl, "retract")]
    if _RETRACT.search(cl):
        style = _style(cl)
        out = [_c("instruction", t, cl, cl, "retract") for t in _topics(cl)]
        if style and re.search(r"\b(?:no more|stop using)\b", cl, _I):
            out.append(_c("preference", style, cl, cl))  # "no more emojis": a standing "don't"
        elif style:
            out.append(_c("preference", style, cl, cl, "retract"))
        if out:
            return out
    if not _IMPERATIVE.search(cl) and not re.search(r"\b(?:from now on|going forward|always)\b", cl, _I):
        return []
    if re.search(r"^(?:please\s+)?(?:don't|do not|never|avoid|no)\b", cl, _I) and (style := _style(cl)):
        return [_c("preference", style, cl, cl)]
    out = []
    for t in _topics(cl):
        if t == "tone" and not re.search(r"\b(?:tone|voice|be|sound|keep|use|stay|more|less)\b", cl, _I):
            continue
        out.append(_c("instruction", t, cl, cl))
    return out[:2]


def tasks(cl: str) -> list[Candidate]:
    """The current task ("I'm writing X") and its completion ("X is done", "I finished X")."""
    out = []
    m = _DONE.search(cl)
    if m:
        v = next((g for g in (m.group("v"), m.group("w"), m.group("x"), m.group("y")) if g is not None), "")
        out.append(_c("task", "current", v, cl, "complete"))
        return out
    m = re.search(rf"\b(?:i'm|i am|im|we're|we are)\s+(?:(?:now|currently|still|also|busy|just)\s+)*"
                  rf"(?:{_TASK_VERBS})\s+(?P<v>[^;.!?]+)|\b(?:help me|i need to|i have to|i must)\s+"
                  r"(?:write|draft|prepare|plan|finish|build|design|organi[sz]e)\s+(?P<w>[^;.!?]+)", cl, _I)
    if m:
        v = re.sub(r"\s+(?:right now|at the moment|this week|these days|now|today)$", "", m.group("v") or m.group("w"),
                   flags=_I)
        if not re.match(r"^(?:on it|it|this|that|something|a bit|out|here|home)$", clean(v), _I) and len(clean(v)) > 2:
            out.append(_c("task", "current", v, cl))
    return out


def forget_requests_en(sent: str) -> list[Candidate]:
    """"Please forget my email address", "delete my address from memory", "forget everything"."""
    m = re.search(r"(?<!don't )(?<!do not )(?<!never )\b(?:forget|delete|remove|erase|clear|wipe)\s+"
                  r"(?:about\s+)?(?P<v>(?:my|the|that i|that i'm|that my|everything|all)\b[^.!?]*)", sent, _I)
    if not m:
        return []
    keys = attr_keys(m.group("v"))
    return [Candidate(kind="forget", key=k, value=clean(m.group("v")), evidence=sent, op="forget") for k in keys]
