"""Roster import: CSV and XLSX, all-or-nothing, every problem by row and column, idempotent."""

from __future__ import annotations

import io

import pytest
from openpyxl import Workbook
from sqlalchemy import func, select

from services.accounts import directory, roster, schemas
from services.accounts.exceptions import Forbidden, InvalidInput, RosterRejected
from services.accounts.models import Teacher, outbox
from services.common.scope import Scope

HEADER = ["工号", "姓名", "学科", "年级", "角色", "教研组"]
ROWS = [
    ["A001", "杜明远", "数学", "七年级", "教师；组长", "数学组"],
    ["A002", "苏映雪", "语文", "七年级", "教师", "语文组"],
    [1003, "孟星河", "英语", "八年级", "博主", "英语组"],  # Excel turns staff numbers into numbers
]


def xlsx_bytes(rows: list[list]) -> bytes:
    workbook = Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def csv_bytes(rows: list[list], encoding: str = "utf-8-sig") -> bytes:
    return "\n".join(",".join(str(cell) for cell in row) for row in rows).encode(encoding)


def teacher_count(session) -> int:
    return session.scalar(select(func.count()).select_from(Teacher))


def test_xlsx_roster_creates_teachers_roles_and_groups(session, city):
    content = xlsx_bytes([HEADER, *ROWS])
    result = roster.import_roster(session, city["admin"], city["master"]["id"], "名册.xlsx", content)
    assert result == {"created": 3, "updated": 0, "unchanged": 0, "rows": 3, "school_id": city["master"]["id"]}
    teachers = directory.list_teachers(session, city["admin"], city["master"]["id"])["items"]
    by_number = {teacher["staff_number"]: teacher for teacher in teachers}
    assert by_number["A001"]["roles"] == ["group_leader", "teacher"]
    assert by_number["1003"]["roles"] == ["blog_host"]
    groups = directory.list_groups(session, city["admin"], city["master"]["id"])
    assert sorted(group["name"] for group in groups) == ["数学组", "英语组", "语文组"]


def test_reimporting_the_same_file_changes_nothing(session, city):
    content = xlsx_bytes([HEADER, *ROWS])
    roster.import_roster(session, city["admin"], city["master"]["id"], "名册.xlsx", content)
    events_before = outbox.backlog(session)
    again = roster.import_roster(session, city["admin"], city["master"]["id"], "名册.xlsx", content)
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 3)
    assert outbox.backlog(session) == events_before


def test_a_changed_row_updates_only_that_teacher(session, city):
    roster.import_roster(session, city["admin"], city["master"]["id"], "r.csv", csv_bytes([HEADER, *ROWS]))
    changed = [ROWS[0], ["A002", "苏映雪", "语文", "八年级", "教师", "语文组"], ROWS[2]]
    result = roster.import_roster(session, city["admin"], city["master"]["id"], "r.csv", csv_bytes([HEADER, *changed]))
    assert (result["created"], result["updated"], result["unchanged"]) == (0, 1, 2)


def test_gb18030_csv_from_older_excel_is_read(session, city):
    content = csv_bytes([HEADER, *ROWS], encoding="gb18030")
    result = roster.import_roster(session, city["admin"], city["master"]["id"], "r.csv", content)
    assert result["created"] == 3


def test_any_bad_row_rejects_the_whole_file_with_every_problem(session, city):
    rows = [
        HEADER,
        ["B001", "温以宁", "数学", "七年级", "教师", ""],
        ["", "无工号", "数学", "七年级", "教师", ""],
        ["B001", "重复工号", "数学", "七年级", "教师", ""],
        ["B004", "方知秋", "数学", "七年级", "船长", ""],
    ]
    with pytest.raises(RosterRejected) as caught:
        roster.import_roster(session, city["admin"], city["master"]["id"], "r.xlsx", xlsx_bytes(rows))
    problems = {(p["row"], p["column"]) for p in caught.value.fields["rows"]}
    assert problems == {(3, "staff_number"), (4, "staff_number"), (5, "roles")}
    assert teacher_count(session) == 0


def test_unknown_and_missing_columns_are_named(session, city):
    with pytest.raises(RosterRejected) as caught:
        roster.import_roster(session, city["admin"], city["master"]["id"], "r.csv",
                             csv_bytes([["姓名", "血型"], ["何意", "A"]]))
    reasons = " ".join(p["reason"] for p in caught.value.fields["rows"])
    assert "Unknown column" in reasons and "staff_number" in reasons


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("r.pdf", b"%PDF-1.4", "Unsupported file type"),
        ("r.xlsx", b"not a zip file", "cannot be opened"),
        ("r.csv", b"", "empty"),
        ("r.csv", b"a,b\x00c", "NUL"),
        ("r.csv", b"x" * (schemas.ROSTER_MAX_FILE_BYTES + 1), "at most"),
    ],
)
def test_broken_files_are_refused_clearly(session, city, filename, content, message):
    with pytest.raises(InvalidInput, match=message):
        roster.import_roster(session, city["admin"], city["master"]["id"], filename, content)


def test_a_school_token_cannot_import_into_another_school(session, city):
    scope = Scope(city["bureau"]["id"], "school", city["branch"]["id"], "write")
    with pytest.raises(Forbidden):
        roster.import_roster(session, scope, city["master"]["id"], "r.csv", csv_bytes([HEADER, *ROWS]))
