"""Dates a question names, read as windows of stored turn days (EN and ZH, absolute and relative)."""

from __future__ import annotations

from datetime import datetime

import pytest

from memchat.memory.date_cues import date_window

NOW = datetime(2026, 12, 2, 10, 0)


@pytest.mark.parametrize(("query", "now", "window"), [
    ("What movie did Joanna watch on 1 May, 2022?", None, ("2022-05-01", "2022-05-01")),
    ("What did Nate make on November 9th, 2022?", None, ("2022-11-09", "2022-11-09")),
    ("Where did Joanna travel to in July 2022?", None, ("2022-07-01", "2022-07-31")),
    ("Where was John between August 11 and August 15 2023?", None, ("2023-08-11", "2023-08-15")),
    ("notes from 2023-06-03", None, ("2023-06-03", "2023-06-03")),
    ("我2025年3月5日说过什么？", None, ("2025-03-05", "2025-03-05")),
    ("2024年2月我们聊了什么", None, ("2024-02-01", "2024-02-29")),
    ("What did I tell you yesterday?", NOW, ("2026-12-01", "2026-12-01")),
    ("昨天我说了什么？", NOW, ("2026-12-01", "2026-12-01")),
    ("What did I mention last week?", NOW, ("2026-11-18", "2026-12-01")),
    ("上周我订的是什么？", NOW, ("2026-11-18", "2026-12-01")),
    ("What did we discuss last month?", NOW, ("2026-11-01", "2026-11-30")),
    ("What did I say 3 days ago?", NOW, ("2026-11-28", "2026-11-30")),
    ("What happened on June 3?", NOW, ("2026-06-03", "2026-06-03")),
    ("What happened on December 24?", NOW, ("2025-12-24", "2025-12-24")),  # not yet this year: last year's
    ("3月5日那天呢？", NOW, ("2026-03-05", "2026-03-05")),
])
def test_windows(query: str, now: datetime | None, window: tuple[str, str]) -> None:
    assert date_window(query, now) == window


@pytest.mark.parametrize(("query", "now"), [
    ("When did Maria meet Jean?", NOW),
    ("May I ask what my order number is?", NOW),
    ("What did I say yesterday?", None),  # relative, and no date to read it against
    ("What happened on June 3?", None),
    ("Compare March 2022 with October 2023.", None),  # too wide to search by
    ("How many days until my trip?", NOW),
    ("It is 10:30 now", NOW),
])
def test_no_window(query: str, now: datetime | None) -> None:
    assert date_window(query, now) is None

