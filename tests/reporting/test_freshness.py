"""Every report says how fresh it is: the newest event it includes and how many still wait."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

from openpyxl import load_workbook

from services.reporting import bulletin, exports, freshness
from tests.reporting.conftest import BUREAU, event, small_city
from tests.reporting.test_projection import apply_all


def test_as_of_is_the_newest_applied_event_time_whatever_the_order(session):
    city = small_city()
    city.activity(101, 11, "blog_post", "2025-03-05T20:00:00+08:00", online=Decimal("0.5"))
    newest, older = city.events.pop(), None
    newest.attributes["time"] = "2025-03-06T08:00:00Z"
    older = event(newest.routing_key, newest.body, time="2025-03-05T08:00:00Z")  # a redelivery, older copy
    older.attributes["id"] = "another-event"
    apply_all(session, [*city.events, newest, older])
    with session.begin():
        described = freshness.describe(session, 3)
    assert described["as_of"] == "2025-03-06T08:00:00Z"
    assert described["as_of_by_source"]["accounts"] == "2025-02-01T00:00:00Z"
    assert described["pending_events"] == 3
    with session.begin():
        assert freshness.describe(session, None)["pending_events"] is None  # unknown is not zero


def test_csv_and_xlsx_carry_as_of_and_pending(session):
    city = small_city()
    apply_all(session, city.events)
    with session.begin():
        report = bulletin.build(session, BUREAU, "month", "2025-03")
        report["freshness"] = freshness.describe(session, 0)
    lines = list(csv.reader(io.StringIO(exports.to_csv(report).decode("utf-8-sig"))))
    assert lines[0][-2:] == ["数据截至", "待处理事件"]
    assert all(line[-2:] == ["无数据", "0"] for line in lines[1:])  # no activity applied yet: no as-of
    report["freshness"] = {"as_of": "2025-03-06T08:00:00Z", "pending_events": None}
    notes = load_workbook(io.BytesIO(exports.to_xlsx(report)))["数据说明"]
    assert [[cell.value for cell in row] for row in notes.iter_rows(max_row=2)] == [
        ["数据截至", "2025-03-06T08:00:00Z"], ["待处理事件", "未知"]]
