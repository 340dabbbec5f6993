"""English clause readers of the rules tier: first-person statements -> slot operations."""

from __future__ import annotations

import re

from memchat.memory.rules_words import (
    DIET_EN,
    ID_NOUNS_EN,
    JOB_HEADS,
    JOB_SUFFIXES,
    NOT_NAMES,
)
from memchat.memory.slot_ops import Candidate, clean

_I = re.I
ADV = r"(?:(?:now|currently|still|also|actually|just|recently|finally|really|already|officially|definitely|" \
      r"honestly|basically|mostly|even|kind of|originally)\s+)*"
NAME = r"[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*){0,3}"
PLACE = r"(?:(?i:the)\s+)?[A-Z][\w'.-]*(?:\s+(?:[A-Z][\w'.-]*|de|del|da|la|upon|am|of)(?=\s+[A-Z]|\s*$|[\s,.]))*(?:\s+[A-Z][\w'.-]*)?"
_TAIL = re.compile(r"\s+(?:any ?more|after all|either|now|though|too|as well|at the moment|right now|this week|"
                   r"these days|for now|anyway|again|please|last (?:week|month|year)|this (?:morning|year|month)|"
                   r"recently|yesterday|today|in \d{4})$", _I)


def _tail(v: str) -> str:
    prev = None
    v = clean(v)
    while prev != v:
        prev = v
        v = clean(_TAIL.sub("", v))
    return v


def _c(kind: str, key: str, value: str, ev: str, op: str = "set", old: str = "") -> Candidate:
    return Candidate(kind=kind, key=f"{kind}:{key}", value=value, evidence=ev, op=op, old=old)


def _is_name(v: str) -> bool:
    words = v.split()
    return bool(words) and all(w.lower().strip("'") not in NOT_NAMES for w in words) and not v.isupper()


_NAME_RULES = [
    re.compile(rf"\b(?i:my (?:full |first )?name(?:'s| is)\s+){ADV}(?P<v>{NAME})"),
    re.compile(rf"\b(?i:(?:you can |please |just )?call me|i go by|i'm called|i am called|calls? me)\s+(?P<v>{NAME})"),
    re.compile(rf"^(?i:i'm|i am|im)\s+(?P<v>{NAME})(?=\s*$|\s*[,.!;]|\s+(?i:and|from|here|by)\b)"),
]
_NAME_FIX = [
    re.compile(rf"\b(?i:name(?: is|'s)? (?:not|isn't|is n't))\s+(?P<old>{NAME})\s*[,;]?\s*(?i:(?:it's|it is|but|rather|i'm)\s+)?(?P<v>{NAME})"),
    re.compile(rf"\b(?i:i'm not|i am not)\s+(?P<old>{NAME})\s*[,;]\s*(?i:i'm|i am)\s+(?P<v>{NAME})"),
    re.compile(rf"\b(?i:name\b.*\b(?:it's|is))\s+(?P<v>{NAME})\s*[,;]?\s*(?i:not)\s+(?P<old>{NAME})"),
]


def sentence_level(sent: str) -> list[Candidate]:
    """Statements spanning commas: name corrections ("not Jakob, it's Jacob"), addresses."""
    out = []
    for pat in _NAME_FIX:
        m = pat.search(sent)
        if m and _is_name(m.group("v")) and m.group("v") != m.group("old"):
            out.append(_c("fact", "name", m.group("v"), sent, "correct", m.group("old")))
            break
    m = re.search(r"\bmy (?:home |shipping |delivery |billing |mailing |new |current )?address(?:'s| is)\s+"
                  r"(?:now\s+|actually\s+)?(?P<v>[^;!?]+?)\s*\.?$|\bi live at\s+(?P<w>\d[^;!?]+?)\s*\.?$", sent, _I)
    if m:
        out.append(_c("fact", "address", m.group("v") or m.group("w"), sent))
    return out


def names(cl: str) -> list[Candidate]:
    """Name statements ("My name is X", "call me X", "I'm X")."""
    if re.search(r"\b(?:don't|do not|never|stop)\s+call me\b", cl, _I):
        m = re.search(rf"call me\s+(?P<v>{NAME})", cl)
        return [_c("fact", "name", m.group("v"), cl, "retract", m.group("v"))] if m else []
    for pat in _NAME_RULES:
        m = pat.search(cl)
        if m and _is_name(m.group("v")):
            return [_c("fact", "name", m.group("v"), cl)]
    return []


_PLACE_SET = [
    re.compile(rf"\b(?i:(?:i|we)\s+{ADV}(?:live|reside|am living|'m living|are living|'re living)\s+in)\s+(?P<v>{PLACE})"),
    re.compile(rf"\b(?i:(?:i'm|i am|we're|we are)\s+{ADV}(?:based|located|living|staying|settled)\s+in)\s+(?P<v>{PLACE})"),
    re.compile(rf"\b(?i:(?:i|we)(?:'ve|\s+have)?\s+{ADV}(?:moved|relocated|moved house)\s+(?:back\s+)?(?:to|into))\s+"
               rf"(?P<v>{PLACE})"),
]
_PLACE_NEG = re.compile(rf"\b(?i:(?:i|we)\s+(?:don't|do not|no longer|no more)\s+{ADV}live in)\s+(?P<v>{PLACE})|"
                        rf"\b(?i:(?:i|we)(?:'ve|\s+have)?\s+moved (?:away )?(?:out of|away from))\s+(?P<w>{PLACE})")


def places(cl: str) -> list[Candidate]:
    """Where the user lives, moves to, or no longer lives (place names are capitalised)."""
    out = []
    neg = _PLACE_NEG.search(cl)
    if neg:
        v = _tail(neg.group("v") or neg.group("w"))
        out.append(_c("fact", "location", v, cl, "retract", v))
    for pat in _PLACE_SET:
        m = pat.search(cl)
        if m:
            out.append(_c("fact", "location", _tail(re.sub(r"^the\s+", "", m.group("v"), flags=_I)), cl))
            break
    return out


def allergies_diet(cl: str) -> list[Candidate]:
    """Allergies and diets, and their retraction ("not allergic to X after all")."""
    out = []
    m = re.search(rf"\b(?:i'm|i am|im)\s+{ADV}(?P<neg>not\s+|no longer\s+|not really\s+)?{ADV}"
                  r"(?:severely |very |mildly |deathly |slightly |also )?allergic to\s+(?P<v>[^,;.!?]+)", cl, _I)
    if m:
        v = _tail(m.group("v"))
        out.append(_c("fact", "allergy", v, cl, "retract" if m.group("neg") else "set", v if m.group("neg") else ""))
    m = re.search(r"\bi have (?:an? |a severe |a mild |a bad )?(?P<v>[\w -]+?) allergy\b|"
                  r"\bi have an allergy to (?P<w>[^,;.!?]+)", cl, _I)
    if m and not out:
        out.append(_c("fact", "allergy", _tail(m.group("v") or m.group("w")), cl))
    m = re.search(rf"\b(?:i'm|i am|im)\s+{ADV}(?P<neg>not\s+|no longer\s+)?(?:an?\s+|strict\s+|strictly\s+)*"
                  rf"(?P<v>{DIET_EN})\b", cl, _I)
    if m:
        v = m.group("v").lower()
        out.append(_c("fact", "diet", v, cl, "retract" if m.group("neg") else "set", v if m.group("neg") else ""))
    m = re.search(r"\bi\s+(?P<v>(?:don't|do not|can't|cannot|can not|never|won't|shouldn't|must not)\s+"
                  r"(?:eat|drink|have)\s+[^,;.!?]+)", cl, _I)
    if m:
        out.append(_c("fact", "diet", _tail(m.group("v")), cl))
    back = re.search(r"\bi\s+(?:now\s+|can\s+|do\s+)*(?:eat|drink)\s+(?P<v>[^,;.!?]+?)\s+(?:again|now|these days)\b", cl, _I)
    if back:
        out.append(_c("fact", "diet", back.group("v"), cl, "retract", back.group("v")))  # "I eat meat again"
    m = re.search(r"\bi\s+(?P<v>(?:avoid|keep kosher|keep halal|eat halal|eat kosher)\b[^,;.!?]*)", cl, _I)
    if m and not re.search(r"avoid (?:talking|using|saying)", cl, _I):
        out.append(_c("fact", "diet", _tail(m.group("v")), cl))
    return out


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"(?<![\w#-])\+?\(?\d[\d\s().-]{5,}\d(?![\w-])")


def contacts(cl: str) -> list[Candidate]:
    """E-mail addresses and phone numbers the user gives as theirs."""
    out = []
    m = _EMAIL.search(cl)
    if m and re.search(r"\b(?:my|me|i|i'm)\b|e-?mail", cl, _I):
        out.append(_c("fact", "email", m.group(0).rstrip("."), cl))
    m = _PHONE.search(cl)
    if m and sum(ch.isdigit() for ch in m.group(0)) >= 7 and re.search(
            r"\b(?:phone|mobile|cell|number|reach me|call me|text me|whatsapp|contact)\b", cl, _I) and not re.search(
            r"\b(?:" + "|".join(ID_NOUNS_EN) + r")\b", cl, _I):
        out.append(_c("fact", "phone", m.group(0).strip(), cl))
    return out


def _job_value(words: list[str]) -> str:
    for i, w in enumerate(words[:5]):
        lw = w.lower().strip(",.")
        if lw in JOB_HEADS or lw.endswith(JOB_SUFFIXES):
            return " ".join(words[: i + 1])
    return ""


def work(cl: str) -> list[Candidate]:
    """Occupation and employer ("I'm a data engineer at X", "I work for Y")."""
    out = []
    m = re.search(rf"\b(?:i'm|i am|im)\s+{ADV}(?:an?|the)\s+(?P<v>[^,;.!?]+)", cl, _I)
    if m:
        rest = m.group("v")
        parts = re.split(r"\s+(?:at|for|with)\s+", rest, maxsplit=1)
        job = _job_value(parts[0].split())
        if job:
            out.append(_c("fact", "occupation", job, cl))
            if len(parts) > 1:
                out.append(_c("fact", "employer", _tail(parts[1]), cl))
    m = re.search(r"\bi (?:work|am working|'m working)\s+as\s+(?:an?\s+)?(?P<v>[^,;.!?]+?)(?:\s+(?:at|for)\s+"
                  r"(?P<o>[^,;.!?]+))?\s*[.!]*$", cl, _I)
    if m:
        words = m.group("v").split()
        job = _job_value(words) or re.split(r"\s+(?:in|at|for|with|on)\s+", m.group("v"))[0]
        out.append(_c("fact", "occupation", _tail(job), cl))
        if m.group("o"):
            out.append(_c("fact", "employer", _tail(m.group("o")), cl))
    elif m := re.search(r"\bi (?:work|am working|'m working|am employed|'m employed)\s+(?:at|for|by)\s+"
                        r"(?P<o>[^,;.!?]+)", cl, _I):
        out.append(_c("fact", "employer", _tail(m.group("o")), cl))
    m = re.search(r"\bi (?:no longer|don't|do not) work (?:at|for)\s+(?P<o>[^,;.!?]+)|\bi (?:quit|left) "
                  r"(?:my job at\s+)?(?P<q>[A-Z][^,;.!?]*)", cl, _I)
    if m:
        v = _tail(m.group("o") or m.group("q"))
        out.append(_c("fact", "employer", v, cl, "retract", v))
    return out


def birthday(cl: str) -> list[Candidate]:
    """Birthdays ("my birthday is July 2nd", "I was born on …")."""
    m = re.search(r"\bmy (?:birthday|birth date|date of birth|bday)(?:'s| is)\s+(?:on\s+)?(?P<v>[^,;.!?]+)|"
                  r"\bi was born on\s+(?P<w>[^;.!?]+)", cl, _I)
    return [_c("fact", "birthday", _tail(m.group("v") or m.group("w")), cl)] if m else []


_ID = re.compile(r"\b(?P<noun>" + "|".join(ID_NOUNS_EN) + r")(?:\s*(?:number|no\.?|#|id|code|ref(?:erence)?))?"
                 r"(?:\s*(?:is|was|:|=|-))?\s*(?:actually\s+|now\s+|really\s+)?(?P<v>#?[A-Za-z0-9…][A-Za-z0-9_/.…-]*[A-Za-z0-9])",
                 _I)


_ANY_ID = re.compile(r"(?<![\w-])#?[A-Za-z0-9][A-Za-z0-9_/-]*\d[A-Za-z0-9_/-]*(?![\w-])")


def ids(cl: str) -> list[Candidate]:
    """Order, ticket, account… numbers: the id span only."""
    out = []
    for m in _ID.finditer(cl):
        v = m.group("v")
        if any(ch.isdigit() for ch in v) and len(v.strip("#")) >= 3:
            key = ID_NOUNS_EN[m.group("noun").lower()]
            more = [x for x in _ANY_ID.findall(cl[m.end():]) if any(ch.isdigit() for ch in x)]
            if more and re.search(r"\b(?:is|was|should be|to|->|not)\b|→", cl[m.end():], _I):
                out.append(_c("fact", key, more[-1], cl, "correct", v))  # "order X is really Y"
            else:
                out.append(_c("fact", key, v, cl))
            break
    return out
