"""The dates a question points at, as a window of stored turn dates: domain rules, no I/O.

"What did I say on 3 June, 2023?", "Where did we travel in July 2022?", "What did I tell you yesterday?",
"上周我说了什么？": a memory from that day (or month, or week) answers it far more often than one that only
shares its words. :func:`date_window` reads such a cue as an inclusive ``(first, last)`` pair of
``YYYY-MM-DD`` days; the engine then also searches the memories stored in that window. Relative cues
("yesterday", "last week", "3 days ago", "昨天", "上个月") and dates without a year need the turn's ``now``.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

MONTHS = {m: i + 1 for i, m in enumerate(
    "january february march april may june july august september october november december".split())}
MONTHS.update({m[:3]: i for m, i in list(MONTHS.items())} | {"sept": 9})
_M = r"(january|february|march|april|may|june|july|august|september|october|november|december|" \
     r"jan|feb|mar|apr|jun|jul|aug|sept|sep|oct|nov|dec)\.?"
_D = r"(\d{1,2})(?:st|nd|rd|th)?"
_Y = r"(\d{4})"
_PREP = "on|since|from|by|until|till|before|after|around|between|and"
MAX_SPAN_DAYS = 62  # a cue spanning more than two months says too little to search by

# (pattern, which groups are day / month / year, by position); the longest forms first
_ABSOLUTE: list[tuple[re.Pattern[str], tuple[int | None, int, int | None]]] = [
    (re.compile(rf"\b{_D}\s+(?:of\s+)?{_M},?\s+{_Y}\b", re.I), (1, 2, 3)),
    (re.compile(rf"\b{_M}\s+{_D},?\s+{_Y}\b", re.I), (2, 1, 3)),
    (re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"), (3, 2, 1)),
    (re.compile(r"(\d{4})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*[日号]"), (3, 2, 1)),
    (re.compile(rf"\b{_M},?\s+{_Y}\b", re.I), (None, 1, 2)),
    (re.compile(r"(\d{4})\s*年\s*(\d{1,2})\s*月(?!\s*\d)"), (None, 2, 1)),
    (re.compile(rf"\b(?:{_PREP})\s+{_D}\s+(?:of\s+)?{_M}\b", re.I), (1, 2, None)),
    (re.compile(rf"\b(?:{_PREP})\s+{_M}\s+{_D}\b(?!\s*[:.]\d)", re.I), (2, 1, None)),
    (re.compile(r"(?<!年)(?<!\d)(\d{1,2})\s*月\s*(\d{1,2})\s*[日号]"), (2, 1, None)),
]
_DAYS_AGO = re.compile(r"\b(\d{1,2}|a|one|two|three|four|five|six)\s+days?\s+ago\b|(\d{1,2})\s*天前", re.I)
_WORDS = {"a": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
_RELATIVE: list[tuple[re.Pattern[str], tuple[int, int]]] = [  # (cue, (first, last) days before now)
    (re.compile(r"\bthe day before yesterday\b|前天"), (2, 2)),
    (re.compile(r"\byesterday\b|昨天|昨日|昨晚", re.I), (1, 1)),
    (re.compile(r"\b(?:today|this morning|tonight|earlier today)\b|今天|今日|今早|今晚", re.I), (0, 0)),
    (re.compile(r"\blast week\b|\ba week ago\b|上周|上个?星期|上个?礼拜", re.I), (14, 1)),
    (re.compile(r"\bthis week\b|这周|本周|这个?星期", re.I), (6, 0)),
]
_LAST_MONTH = re.compile(r"\blast month\b|上个?月", re.I)


def date_window(query: str, now: datetime | None = None) -> tuple[str, str] | None:
    """The ``(first, last)`` days the query points at, or None when it names no date (or spans too much)."""
    days: list[tuple[date, date]] = []
    rest = query
    years = [int(y) for y in re.findall(r"(?<!\d)(\d{4})(?!\d)", query) if 1900 < int(y) < 2200]
    hint = max(years) if years else None  # "between August 11 and August 15 2023": the 11th is in 2023 too
    for pattern, (d, m, y) in _ABSOLUTE:
        for match in pattern.finditer(rest):
            got = _span(match, d, m, y, now, hint)
            if got is not None:
                days.append(got)
        rest = pattern.sub(" ", rest)  # "3 June, 2023" is not read again as "June, 2023"
    if now is not None:
        days += _relative(query, now.date())
    if not days:
        return None
    first, last = min(a for a, _ in days), max(b for _, b in days)
    if (last - first).days > MAX_SPAN_DAYS:
        return None
    return first.isoformat(), last.isoformat()


def _span(match: re.Match[str], d: int | None, m: int, y: int | None, now: datetime | None,
          hint: int | None) -> tuple[date, date] | None:
    raw_m = match.group(m)
    month = MONTHS.get(raw_m.lower().rstrip(".")) if not raw_m.isdigit() else int(raw_m)
    if y is None:
        if hint is None and now is None:
            return None
        year = hint if hint is not None else now.year  # type: ignore[union-attr]
    else:
        year = int(match.group(y))
    try:
        if d is None:
            first = date(year, month or 0, 1)
            nxt = date(year + (first.month == 12), first.month % 12 + 1, 1)
            return first, nxt - timedelta(days=1)
        day = date(year, month or 0, int(match.group(d)))
    except ValueError:
        return None
    if y is None and hint is None and now is not None and day > now.date():
        day = day.replace(year=year - 1) if not (day.month == 2 and day.day == 29) else day
    return day, day


def _relative(query: str, today: date) -> list[tuple[date, date]]:
    out = []
    for pattern, (a, b) in _RELATIVE:
        if pattern.search(query):
            out.append((today - timedelta(days=a), today - timedelta(days=b)))
    for match in _DAYS_AGO.finditer(query):
        raw = (match.group(1) or match.group(2) or "").lower()
        n = int(raw) if raw.isdigit() else _WORDS.get(raw, 0)
        if n:
            out.append((today - timedelta(days=n + 1), today - timedelta(days=max(0, n - 1))))
    if _LAST_MONTH.search(query):
        end = today.replace(day=1) - timedelta(days=1)
        out.append((end.replace(day=1), end))
    return out
