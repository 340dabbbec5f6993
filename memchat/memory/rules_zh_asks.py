"""Chinese instructions, preferences, tasks and forget requests -> slot operations."""

from __future__ import annotations

import re

from memchat.memory.rules_guard import pos_tags
from memchat.memory.rules_words import FORMAT_ZH, LANG_ZH, LENGTH_ZH, STYLE_ZH, TONE_ZH, attr_keys
from memchat.memory.rules_zh import mine
from memchat.memory.slot_ops import Candidate, clean

_WITHDRAW = re.compile(r"不用|不需要|不必|别再|不要再|取消|算了|免了|不用再")
_ALLOW = re.compile(r"可以(?:用|使用|加|带)?|没关系|也行|无所谓|随便用|没问题")
_TASK_VERBS = ("撰写|写|准备|筹备|做|策划|规划|开发|整理|研究|学习|学|复习|翻译|设计|搭建|装修|找|赶|修改|改|编写|起草|"
               "筹划|组织|计划|排练|备考|考")
_DONE = re.compile(r"(?:写完|做完|弄完|搞定|完成|交了|提交了|发出去了|发出了|结束了|忙完|准备好了|办完|交稿|做好了|写好了|"
                   r"不做了|不写了|取消了|放弃了)")


_V_DONE = re.compile(r"(?<=[\u4e00-\u9fff]{2})[\u4e00-\u9fff]完了")  # "雅思考完了": an object, then V完了


def _c(kind: str, key: str, value: str, ev: str, op: str = "set") -> Candidate:
    return Candidate(kind=kind, key=f"{kind}:{key}", value=clean(value), evidence=ev, op=op)


def _topics(cl: str) -> list[str]:
    out = []
    if re.search(rf"(?:{TONE_ZH})|口吻|语气|风格", cl):
        out.append("tone")
    if re.search(LANG_ZH, cl):
        out.append("language")
    if re.search(FORMAT_ZH, cl):
        out.append("format")
    if LENGTH_ZH.search(cl) or re.search(r"字数|篇幅|长度", cl):
        out.append("length")
    return out


def _style(cl: str) -> str:
    return next((key for word, key in STYLE_ZH.items() if word in cl.lower()), "")


def instructions(cl: str) -> list[Candidate]:
    """请用日语回答, 语气正式一点, 用表格, 简短一点, 不要使用缩写; 可以用缩写了 / 不用那么正式了 withdraw."""
    style = _style(cl)
    if style and _ALLOW.search(cl) and not re.search(r"不要|别|不许|禁止", cl):
        return [_c("preference", style, cl, cl, "retract")]
    if style and re.search(r"不要|别|不许|禁止|不用|避免|少用", cl):
        return [_c("preference", style, cl, cl)]
    topics = _topics(cl)
    if not topics:
        return []
    if _WITHDRAW.search(cl) and (re.search(r"了$", cl) or re.search(r"那么|这么|再", cl)):
        return [_c("instruction", t, cl, cl, "retract") for t in topics]
    imperative = re.search(r"请|用|使用|以|改用|换成|说|讲|回答|回复|一点|一些|点儿|控制|不超过|以内|以下|保持|尽量|务必|"
                           r"以后|从现在起|今后", cl)
    if not imperative or re.search(r"^(?:我|他|她|你)(?:在|正在|会|能|喜欢)", cl):
        return []
    if "language" in topics and not re.search(rf"(?:用|使用|说|讲|改用|换成|以)(?:{LANG_ZH})", cl):
        topics.remove("language")
    return [_c("instruction", t, cl, cl) for t in topics[:2]]


def tasks(cl: str, inh: str) -> list[Candidate]:
    """我正在写X / 这周在准备X; X已经写完了 / 我写完了 -> completion."""
    m = _DONE.search(cl) or _V_DONE.search(cl)
    if m:
        before, after = cl[: m.start()], cl[m.end():]
        obj = re.sub(r"^我|已经|终于|总算|都|全部|刚|刚刚|把|了$", "", before)
        obj = re.sub(r"已经|终于|总算|刚刚|刚|都|全部", "", obj) or re.sub(r"了$", "", after)
        if not re.search(r"他|她|你|别人", before):
            return [_c("task", "current", obj, cl, "complete")]
    m = re.search(rf"(?:正在|在|正|忙着|着手)(?P<verb>{_TASK_VERBS})(?P<v>[^，,。！!？?；;]{{2,40}})", cl)
    if m and mine(cl[: m.start()], inh)[0] and m.group("verb") in {w for w, _ in pos_tags(cl)}:
        v = re.sub(r"了$|呢$|中$", "", m.group("v"))
        v = m.group("verb") + v if len(v) <= 2 else v  # "找工作", "学日语"
        if len(v) >= 2 and not re.match(r"^(?:什么|啥|饭|作业呢)", v):
            return [_c("task", "current", v, cl)]
    return []


def forget_requests_zh(sent: str) -> list[Candidate]:
    """忘记我过敏的事吧, 删除我的地址, 别记我的电话了."""
    m = re.search(r"(?:忘记|忘掉|删除|删掉|清除|清掉|抹掉|别记|不要记|不用记)(?:住)?(?:掉)?(?P<v>[^。！!？?]{1,20})|"
                  r"把(?P<v2>[^。！!？?]{1,20}?)(?:删掉|删除|删了|忘掉|忘了|清除|清掉|去掉)", sent)
    if not m or re.search(r"我$|我已经$|我都$", sent[: m.start()].strip()) or re.search(r"不要忘|别忘", sent):
        return []
    named = m.group("v") or m.group("v2") or ""
    keys = attr_keys(named)
    return [Candidate(kind="forget", key=k, value=clean(named), evidence=sent, op="forget") for k in keys]
