"""Teachers' names in bulletins, school reports and exports: one bounded lookup, never a failed report."""

from __future__ import annotations

import base64
import csv
import io
from decimal import Decimal
from typing import Any

import eventlet
import pytest
from nameko.testing.services import worker_factory
from openpyxl import load_workbook
from sqlalchemy.orm import Session

from services.common.scope import Scope
from services.reporting import bulletin, compliance, exports, names, rules, views
from services.reporting.service import ReportingService
from tests.reporting.conftest import BUREAU, SPRING_TERM, small_city
from tests.reporting.test_projection import apply_all
from tests.reporting.test_reports import TODAY, comply

NAMES = {201: "王丽", 202: "李强", 203: "赵敏"}


class FakeAccounts:
    """Answers like accounts over JSON (keys as text) and remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[list[int]] = []

    def __call__(self, teacher_ids: list[int]) -> dict[str, dict[str, Any]]:
        self.asked.append(teacher_ids)
        return {str(tid): {"name": NAMES[tid], "staff_number": f"T{tid:04d}", "school_id": 12}
                for tid in teacher_ids if tid in NAMES}


def failing(_teacher_ids: list[int]) -> dict:
    raise ConnectionError("accounts is down")


@pytest.fixture
def ranked(session: Session) -> Session:
    rules.save(session, BUREAU, {**rules.PRESET, "terms": [SPRING_TERM]})
    session.commit()
    city = small_city()
    for teacher_id in (201, 202, 203):
        comply(city, teacher_id, 12)
    apply_all(session, city.events)
    return session


def test_a_bulletin_names_only_the_teachers_it_ranks(ranked: Session) -> None:
    report = bulletin.build(ranked, BUREAU, "term", "2025-spring", today=TODAY)
    accounts = FakeAccounts()
    names.name_lines(report, bulletin.TEACHER_SECTIONS, accounts)
    assert accounts.asked == [[201, 202, 203]]  # one call, the ranked teachers only
    assert [line["name"] for line in report["excellent_teachers"]] == ["王丽", "李强", "赵敏"]
    assert report["names_unavailable"] is False


def test_without_accounts_the_report_is_still_produced(ranked: Session) -> None:
    report = names.name_lines(bulletin.build(ranked, BUREAU, "term", "2025-spring", today=TODAY),
                              bulletin.TEACHER_SECTIONS, failing)
    assert report["names_unavailable"] is True
    assert [line["name"] for line in report["excellent_teachers"]] == [None, None, None]
    assert report["excellent_teachers"][0]["staff_number"] == "T0201"


def test_a_slow_answer_is_cut_off() -> None:
    def slow(_teacher_ids: list[int]) -> dict:
        eventlet.sleep(5)
        return {}

    assert names.resolve(names.bounded(slow, 0.05), [1, 2]) is None
    assert names.resolve(names.bounded(FakeAccounts(), 1.0), [201, 999]) == {201: "王丽"}


def test_large_lists_are_asked_in_batches() -> None:
    accounts = FakeAccounts()
    assert names.resolve(accounts, range(1, names.BATCH + 2)) == {201: "王丽", 202: "李强", 203: "赵敏"}
    assert [len(batch) for batch in accounts.asked] == [names.BATCH, 1]


def test_a_school_report_names_its_teachers(ranked: Session) -> None:
    rule_set = rules.in_force(ranked, BUREAU)
    evaluation = compliance.evaluate(ranked, BUREAU, rule_set.calendar.term("2025-spring"), rule_set, [12],
                                     today=TODAY)
    report = names.name_lines(views.school_report(evaluation, 12), ["teacher_results"], FakeAccounts())
    assert {line["teacher_id"]: line["name"] for line in report["teacher_results"]} == NAMES


def test_exports_carry_a_name_column(ranked: Session) -> None:
    report = names.name_lines(bulletin.build(ranked, BUREAU, "term", "2025-spring", today=TODAY),
                              bulletin.TEACHER_SECTIONS, FakeAccounts())
    lines = list(csv.reader(io.StringIO(exports.to_csv(report, "excellent_teachers").decode("utf-8-sig"))))
    assert lines[0][:4] == ["名次", "教师ID", "姓名", "工号"]
    assert [line[2] for line in lines[1:]] == ["王丽", "李强", "赵敏"]
    sheet = load_workbook(io.BytesIO(exports.to_xlsx(report)))["优秀教师"]
    header = [cell.value for cell in sheet[2]]  # row 1 is the sheet's title
    rows = [dict(zip(header, row, strict=True)) for row in sheet.iter_rows(min_row=3, values_only=True)]
    assert [(row["教师ID"], row["姓名"]) for row in rows] == [(201, "王丽"), (202, "李强"), (203, "赵敏")]


# --- the service: names through its accounts RpcProxy ------------------------------------------------


@pytest.fixture
def service(session: Session) -> Any:
    rules.save(session, BUREAU, {**rules.PRESET, "terms": [SPRING_TERM]})
    session.commit()
    city = small_city()
    city.activity(101, 11, "online_course_study", "2025-03-03T09:00:00+08:00", online=Decimal("15"))
    city.activity(101, 11, "offline_study", "2025-03-04T09:00:00+08:00", offline=Decimal("2"))
    for _ in range(10):
        city.activity(101, 11, "lesson_observation", "2025-03-05T09:00:00+08:00", offline=Decimal("1"))
    for _ in range(3):
        city.activity(101, 11, "blog_post", "2025-03-06T09:00:00+08:00", online=Decimal("0.5"))
    apply_all(session, city.events)
    return worker_factory(ReportingService, db=session)


def test_worker_asks_accounts_with_the_callers_scope(service: Any) -> None:
    service.accounts.teacher_names.return_value = {"101": {"name": "孙悦", "staff_number": "T0101", "school_id": 11}}
    school = Scope(BUREAU, "school", 11).to_dict()
    report = service.school_compliance(school, 11, {"kind": "month", "key": "2025-03"})
    service.accounts.teacher_names.assert_called_once_with(school, [101, 102, 103, 104, 105, 106])
    named = {line["teacher_id"]: line["name"] for line in report["teacher_results"]}
    assert named[101] == "孙悦" and named[102] is None and report["names_unavailable"] is False


def test_worker_produces_the_bulletin_when_accounts_is_silent(service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(names, "TIMEOUT_SECONDS", 0.05)
    service.accounts.teacher_names.side_effect = lambda *_args: eventlet.sleep(5)
    bureau = Scope.bureau_admin(BUREAU).to_dict()
    report = service.get_bulletin(bureau, {"kind": "month", "key": "2025-03"})
    assert report["names_unavailable"] is True
    assert [line["teacher_id"] for line in report["excellent_teachers"]] == [101]
    assert report["excellent_teachers"][0]["name"] is None
    download = service.export_bulletin(bureau, {"kind": "month", "key": "2025-03", "format": "csv",
                                                "section": "excellent_teachers"})
    text = base64.b64decode(download["content_base64"]).decode("utf-8-sig")
    assert text.splitlines()[0].split(",")[2] == "姓名"
