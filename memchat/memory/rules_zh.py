"""Chinese clause readers of the rules tier: first-person statements -> slot operations.

Each reader finds an anchor (叫, 住在, 对…过敏, 订单号 …) and checks what stands before it: only the
user (我, 本人, or nothing in a clause that continues the user's sentence) plus adverbs and time words
may precede it, so "我同事对牛奶过敏" and "我爸爸叫…" are not about the user.
"""

from __future__ import annotations

import re

from memchat.memory.rules_guard import pos_tags
from memchat.memory.rules_words import (
    COMPOUND_SURNAMES,
    ID_NOUNS_ZH,
    NAME_BAD_END_ZH,
    NOT_NAMES_ZH,
    ORG_ZH,
    PERSON_ZH,
    SURNAMES,
)
from memchat.memory.slot_ops import Candidate, clean

_FILLER = frozenset("其实 现在 目前 已经 也 还 都 一直 平时 本人 自己 真的 确实 刚 刚刚 才 就 又 再 不再 最近 这周 本周 "
                    "今年 如今 终于 早就 总是 常年 长期 从小 一般 主要 重新 马上 之前 之后 以前 原来 后来 那 这 哦 嗯 "
                    "对了 另外 而且 并且 然后 但是 不过 所以 我们 咱们 一家 全家 说错了 搞错了 更正 纠正 不对 其实是".split())
_PAST = re.compile(r"以前|之前|原来|过去|曾经|小时候|从前|早年|那时|当年|上学时")
_TIME_FLAGS = ("t", "d", "f", "m", "c", "y", "e", "u")
_NEG = re.compile(r"不再|已经不|不|没有|没")
_STOP = re.compile(r"了|啦|呢|啊|吧|哦|呀|已经|很多|好几|几年|多年|一段|这边|那边|工作|上班|生活|居住|定居|住|"
                   r"的时候|以后|之后|现在|目前|快|了")


def _c(kind: str, key: str, value: str, ev: str, op: str = "set", old: str = "") -> Candidate:
    return Candidate(kind=kind, key=f"{kind}:{key}", value=clean(value), evidence=ev, op=op, old=old)


def mine(prefix: str, inherited: str) -> tuple[bool, bool]:
    """(about the user, negated) for the text before an anchor."""
    p = prefix.strip()
    if re.search(PERSON_ZH, p) or re.search(r"他|她|它|你|您|别人|人家|大家|对方", p):
        return False, False
    if _PAST.search(p):
        return False, False  # "我以前住在北京": no longer current
    neg = bool(_NEG.search(p))
    rest = p
    for w in sorted(_FILLER, key=len, reverse=True):
        rest = rest.replace(w, "")
    rest = _NEG.sub("", rest).replace("我", "").replace("的", "").strip(" ，,")
    if rest and any(flag[:1] not in _TIME_FLAGS for _, flag in pos_tags(rest)):
        return False, neg  # a time word or adverb ("上个月", "刚刚") may stand before the anchor; a noun may not
    return ("我" in p or inherited != "3"), neg


def _run(text: str, limit: int = 30) -> str:
    """The value span after an anchor: up to punctuation or a space."""
    m = re.match(r"[\s：:是为]*(?P<v>[^，,。.！!？?；;\s]{1,%d})" % limit, text)  # noqa: UP031
    return m.group("v") if m else ""


def _place(v: str) -> str:
    v = _STOP.split(v, maxsplit=1)[0]
    words = pos_tags(v) if v else []
    out = ""
    for w, flag in words:
        if out and flag[:1] not in ("n", "s", "m", "q", "j", "x", "e") and flag != "eng":
            break
        out += w
    return clean(out)


def _name(v: str, strict: bool) -> str:
    v = re.split(r"住|在|今年|来自|是|的|了|啊|呀|吧|哦|就行|就好|好了|和|，", v, maxsplit=1)[0] if strict else \
        re.split(r"就行|就好|好了|吧|了|啊|呀|哦|，", v, maxsplit=1)[0]
    if not v or v in NOT_NAMES_ZH or re.search(r"什么|啥|谁|哪|名字", v):
        return ""
    if re.fullmatch(r"[A-Z][a-z]+(?: [A-Z][a-z]+)?", v):
        return v
    if not re.fullmatch(r"[\u4e00-\u9fff]{2,4}", v) or v[-1] in NAME_BAD_END_ZH:
        return ""
    if not strict and any(flag[:1] in ("v", "t", "d", "p") for _, flag in pos_tags(v)):
        return ""  # "他叫我明天来": 叫我 + a verb phrase is no name
    if strict:  # "我是X": only a surname-led name is a name ("我是老客户了" is not)
        if not (v[0] in SURNAMES or v.startswith(COMPOUND_SURNAMES)) or len(v) > (4 if v[:2] in COMPOUND_SURNAMES else 3):
            return ""
        if any(flag[:1] in ("d", "v", "a", "m", "p", "c", "u", "y", "r") and len(w) > 1 for w, flag in pos_tags(v)):
            return ""
    return v


def names(cl: str, inh: str) -> list[Candidate]:
    """我叫X, 我的名字是X, 叫我X, 我是X (a surname-led name only); 我不叫X -> retraction."""
    m = re.search(r"我不叫(?P<v>[\u4e00-\u9fffA-Za-z]{2,4})", cl)
    if m:
        return [_c("fact", "name", m.group("v"), cl, "retract", m.group("v"))]
    for pat, strict in ((r"名字(?:其实)?(?:是|叫)", False), (r"我(?:其实|现在|就)?叫(?:做)?", False),
                        (r"叫我", False), (r"我(?:其实|就)?是", True)):
        m = re.search(pat, cl)
        if not m:
            continue
        pre = cl[: m.start()]
        if pat == "叫我":
            if re.search(PERSON_ZH, pre) or re.search(r"他|她|别人", pre):
                continue
        elif not mine(pre, inh)[0]:
            continue
        v = _name(_run(cl[m.end():], 12), strict)
        if v:
            return [_c("fact", "name", v, cl)]
    return []


def places(cl: str, inh: str) -> list[Candidate]:
    """住在X, 搬到X, 在X工作; 不住在X了 -> retraction."""
    out = []
    for m in re.finditer(r"(?:住在|住|家在|搬到了|搬到|搬去了|搬去|迁到|移居到?|定居在|定居|生活在)", cl):
        pre = cl[: m.start()]
        if re.search(r"打算|想|要|准备|计划|将|会|下个月|明年|以后", pre):
            continue
        about, neg = mine(pre, inh)
        v = _place(_run(cl[m.end():]))
        if about and v and len(v) >= 2:
            out.append(_c("fact", "location", v, cl, "retract" if neg else "set", v if neg else ""))
            return out
    w = re.search(r"在(?P<v>[^，,。在]{2,20}?)(?:工作|上班)", cl)
    if w and mine(cl[: w.start()], inh)[0]:
        v = w.group("v")
        if ORG_ZH.search(v):
            out.append(_c("fact", "employer", v, cl))
        elif (p := _place(v)) and len(p) >= 2:
            out.append(_c("fact", "work_city", p, cl))
    return out


def allergies_diet(cl: str, inh: str) -> list[Candidate]:
    """对X过敏 (不过敏 -> retraction), 不吃X, 吃素."""
    out = []
    m = re.search(r"对(?P<v>[^，,。]{1,15}?)(?P<neg>不|不再|已经不)?过敏", cl)
    if m:
        about, neg = mine(cl[: m.start()], inh)
        if about:
            neg = neg or bool(m.group("neg"))
            v = clean(re.sub(r"^(?:于)", "", m.group("v")))
            out.append(_c("fact", "allergy", v, cl, "retract" if neg else "set", v if neg else ""))
    m = re.search(r"(?P<v>(?:不|不能|不敢|没法)(?:吃|喝)|忌口|吃不了|喝不了)(?P<o>[^，,。了]{1,10})", cl)
    if m and mine(cl[: m.start()], inh)[0] and not re.search(r"饭|东西|早饭|午饭|晚饭|早餐", m.group("o")):
        out.append(_c("fact", "diet", m.group("v") + m.group("o"), cl))
    back = re.search(r"(?:现在|又|开始|已经|能|可以)+(?:吃|喝)(?P<o>[^，,。了]{1,10})了", cl)
    if back and mine(cl[: back.start()], inh)[0]:
        out.append(_c("fact", "diet", back.group("o"), cl, "retract", back.group("o")))  # "我现在吃牛肉了"
    m = re.search(r"吃素|素食(?:者|主义者)?|纯素", cl)
    if m and mine(re.sub(r"是$", "", cl[: m.start()]), inh)[0]:
        out.append(_c("fact", "diet", m.group(0), cl))
    return out


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def contacts(cl: str, inh: str) -> list[Candidate]:
    """Mail and phone, when the clause is the user's and names them (邮箱, 手机, 电话)."""
    out = []
    m = _EMAIL.search(cl)
    if m and mine(re.split(r"邮箱|邮件|email|e-mail", cl[: m.start()], flags=re.I)[0], inh)[0]:
        out.append(_c("fact", "email", m.group(0).rstrip("."), cl))
    m = re.search(r"(?:手机|电话|手机号|手机号码|电话号码|联系方式|号码)[^\d+]{0,6}(?P<v>\+?\d[\d\s-]{5,}\d)", cl)
    if m and not re.search("|".join(ID_NOUNS_ZH), cl[: m.start("v")]) and mine(
            re.split(r"手机|电话|联系方式|号码", cl[: m.start()])[0], inh)[0]:
        out.append(_c("fact", "phone", m.group("v").strip(), cl))
    return out


def work(cl: str, inh: str) -> list[Candidate]:
    """我是一名X, 我在X做Y, 我的工作是X, 我从事X."""
    m = re.search(r"是(?:一名|一个|一位|名)(?P<v>[^，,。]{2,12})|(?:我的)?(?:工作|职业)是(?P<w>[^，,。]{2,12})|"
                  r"从事(?P<x>[^，,。]{2,12})|是做(?P<y>[^，,。]{1,10})的", cl)
    out = []
    if m and mine(cl[: m.start()], inh)[0]:
        v = next(g for g in m.groups() if g)
        out.append(_c("fact", "occupation", re.sub(r"了$|工作$|行业$", "", v), cl))
    m = re.search(r"在(?P<o>[^，,。在]{2,15}?)(?:做|当|担任|负责|搞)(?P<v>[^，,。]{1,12})", cl)
    if m and mine(cl[: m.start()], inh)[0] and ORG_ZH.search(m.group("o")):
        out.append(_c("fact", "employer", m.group("o"), cl))
        out.append(_c("fact", "occupation", re.sub(r"了$|工作$", "", m.group("v")), cl))
    return out


def birthday(cl: str, inh: str) -> list[Candidate]:
    """我的生日是X."""
    m = re.search(r"生日(?:是|在|为)?(?P<v>[^，,。！!？?]{2,15})", cl)
    if m and mine(re.sub(r"的$", "", cl[: m.start()]), inh)[0]:
        return [_c("fact", "birthday", re.sub(r"了$", "", m.group("v")), cl)]
    return []


_ID = re.compile(r"(?P<noun>" + "|".join(sorted(ID_NOUNS_ZH, key=len, reverse=True)) + r")"
                 r"(?:码)?(?:其实|应该|现在|改成|改为|换成|是|为|:|：|\s)*(?P<v>#?[A-Za-z0-9…][A-Za-z0-9_…-]*[A-Za-z0-9])")


_ANY_ID = re.compile(r"(?<![A-Za-z0-9_-])#?[A-Za-z0-9][A-Za-z0-9_-]*\d[A-Za-z0-9_-]*(?![A-Za-z0-9_-])")


def ids(cl: str, inh: str) -> list[Candidate]:
    """订单号/工单号/账号…: the ASCII id only (it stops where the id stops)."""
    out = []
    for m in _ID.finditer(cl):
        v = m.group("v")
        pre = cl[: m.start()]
        if re.search(PERSON_ZH, pre) or re.search(r"他|她|你|您|别人", pre):
            continue
        if any(ch.isdigit() for ch in v) and len(v.strip("#")) >= 3:
            key = ID_NOUNS_ZH[m.group("noun")]
            more = _ANY_ID.findall(cl[m.end():])
            if more and re.search(r"应该是|改成|改为|换成|其实是|是|→|->", cl[m.end():]):
                out.append(_c("fact", key, more[-1], cl, "correct", v))  # "订单号X应该是Y"
            else:
                out.append(_c("fact", key, v, cl))
            break
    a = re.search(r"(?:收货|送货|家庭|家|公司|寄送|邮寄|新)?地址(?:是|为|:|：|改成|改为|换成|更新为)\s*(?P<v>[^，,。！!？?；;]{4,60})", cl)
    if a and mine(re.sub(r"的$", "", cl[: a.start()]), inh)[0]:
        out.append(_c("fact", "address", a.group("v"), cl))
    return out
