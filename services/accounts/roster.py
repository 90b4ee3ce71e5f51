"""Roster import from CSV or XLSX: all-or-nothing per file, every problem listed by row and column.

Schools keep rosters in Excel with Chinese headers, so both English and Chinese column names are
accepted, CSV may be UTF-8 (with or without BOM) or GB18030, and re-importing the same file changes
nothing. Teachers absent from the file are left as they are (leaving is an explicit change).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.accounts.directory import announce_teacher, apply_teacher_changes, school_in_scope, teacher_out
from services.accounts.exceptions import InvalidInput, RosterRejected
from services.accounts.models import Group, GroupMember, School, Teacher, TeacherRole, outbox
from services.accounts.schemas import ROLES, ROSTER_MAX_FILE_BYTES
from services.common.scope import Scope

MAX_ROWS = 5000

COLUMNS: dict[str, tuple[str, ...]] = {
    "staff_number": ("staff_number", "工号", "教师编号", "编号"),
    "name": ("name", "姓名"),
    "subject": ("subject", "学科", "任教学科"),
    "grade": ("grade", "年级", "任教年级"),
    "roles": ("roles", "角色", "职务"),
    "research_group": ("research_group", "教研组", "年组"),
}
REQUIRED = ("staff_number", "name")
ROLE_LABELS: dict[str, str] = {
    "教师": "teacher",
    "组长": "group_leader",
    "教研组长": "group_leader",
    "博主": "blog_host",
    "主持人": "moderator",
    "中层": "middle_manager",
    "中层干部": "middle_manager",
    "主任": "dean",
    "教导主任": "dean",
    "校长": "principal",
    "教研员": "researcher",
    "研训中心成员": "centre_member",
    "管理员": "bureau_admin",
    **{role: role for role in ROLES},
}


@dataclass
class RosterRow:
    number: int  # as the school sees it in Excel: the header is row 1
    values: dict[str, str]
    roles: list[str] = field(default_factory=list)


def decode_upload(content_base64: str) -> bytes:
    """The file's bytes from an RPC body (JSON carries them as base64)."""
    try:
        return base64.b64decode(content_base64, validate=True)
    except (binascii.Error, TypeError, ValueError) as error:
        raise InvalidInput("content_base64 is not valid base64.") from error


def read_table(filename: str, content: bytes) -> list[list[str]]:
    """The cells of the file's first sheet as text, header row first."""
    if len(content) > ROSTER_MAX_FILE_BYTES:
        raise InvalidInput(f"The file is {len(content)} bytes; at most {ROSTER_MAX_FILE_BYTES} are accepted.")
    lower = filename.lower()
    if lower.endswith(".xlsx"):
        return _read_xlsx(content)
    if lower.endswith(".csv") or lower.endswith(".txt"):
        return _read_csv(content)
    raise InvalidInput(f"Unsupported file type {filename!r}: upload a .csv or .xlsx file.")


def _read_csv(content: bytes) -> list[list[str]]:
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = content.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:  # pragma: no cover - gb18030 decodes any byte string
        raise InvalidInput("The CSV file is neither UTF-8 nor GB18030 text.")
    if "\x00" in text:
        raise InvalidInput("The CSV file contains NUL bytes; is it really a CSV file?")
    try:
        return [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text))]
    except csv.Error as error:
        raise InvalidInput(f"The CSV file cannot be read: {error}.") from error


def _read_xlsx(content: bytes) -> list[list[str]]:
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(io.BytesIO(content), read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as error:
        raise InvalidInput(f"The .xlsx file cannot be opened: {error}.") from error
    try:
        sheet = workbook.worksheets[0]
        rows = []
        for row in sheet.iter_rows(values_only=True):
            rows.append(["" if cell is None else _cell_text(cell) for cell in row])
            if len(rows) > MAX_ROWS + 1:
                break
        return rows
    finally:
        workbook.close()


def _cell_text(cell: Any) -> str:
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))  # staff numbers typed as numbers in Excel
    return str(cell).strip()


def parse_rows(table: list[list[str]]) -> tuple[list[RosterRow], list[dict[str, Any]]]:
    """Rows keyed by canonical column names, and every problem found (row, column, reason)."""
    table = [row for row in table if any(cell for cell in row)]
    if not table:
        raise InvalidInput("The file is empty: expected a header row and one row per teacher.")
    if len(table) - 1 > MAX_ROWS:
        raise InvalidInput(f"The file has more than {MAX_ROWS} teachers; split it.")
    header = table[0]
    positions: dict[str, int] = {}
    unknown: list[str] = []
    for index, title in enumerate(header):
        canonical = next((name for name, aliases in COLUMNS.items() if title.strip().lower() in aliases), None)
        if canonical is None:
            if title:
                unknown.append(title)
        else:
            positions[canonical] = index
    problems: list[dict[str, Any]] = [
        {"row": 1, "column": title, "reason": "Unknown column (expected one of: "
         + ", ".join(f"{aliases[0]}/{aliases[1]}" for aliases in COLUMNS.values()) + ")."}
        for title in unknown
    ]
    problems += [
        {"row": 1, "column": name, "reason": f"Missing required column {name} ({COLUMNS[name][1]})."}
        for name in REQUIRED if name not in positions
    ]
    if problems:
        return [], problems

    rows: list[RosterRow] = []
    seen: dict[str, int] = {}
    for number, cells in enumerate(table[1:], start=2):
        values = {name: (cells[index].strip() if index < len(cells) else "") for name, index in positions.items()}
        row = RosterRow(number, values)
        for name in REQUIRED:
            if not values.get(name):
                problems.append({"row": number, "column": name, "reason": "Empty; a value is required."})
        staff_number = values.get("staff_number", "")
        if len(staff_number) > 40 or len(values.get("name", "")) > 100:
            problems.append({"row": number, "column": "staff_number/name", "reason": "Too long."})
        if staff_number and staff_number in seen:
            problems.append({"row": number, "column": "staff_number",
                             "reason": f"Duplicate staff number {staff_number!r} (also row {seen[staff_number]})."})
        seen.setdefault(staff_number, number)
        for label in _split_roles(values.get("roles", "")):
            role = ROLE_LABELS.get(label)
            if role is None:
                problems.append({"row": number, "column": "roles", "reason": f"Unknown role {label!r}."})
            elif role not in row.roles:
                row.roles.append(role)
        rows.append(row)
    return rows, problems


def _split_roles(text: str) -> list[str]:
    for separator in ("；", "，", "、", ",", "|"):
        text = text.replace(separator, ";")
    return [part.strip() for part in text.split(";") if part.strip()]


def import_roster(
    session: Session, scope: Scope, school_id: int, filename: str, content: bytes,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Apply a roster file to one school; raises `RosterRejected` (applying nothing) on any problem."""
    scope.require_write()
    school = school_in_scope(session, scope, school_id)
    rows, problems = parse_rows(read_table(filename, content))
    if problems:
        raise RosterRejected(
            f"The roster was not imported: {len(problems)} problem(s) found; nothing was changed.",
            {"rows": problems},
        )
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    for done, row in enumerate(rows, start=1):
        counts[_apply_row(session, school, row)] += 1
        if progress is not None:
            progress(done, len(rows))
    return {**counts, "rows": len(rows), "school_id": school.id}


def _apply_row(session: Session, school: School, row: RosterRow) -> str:
    values = row.values
    staff_number = values["staff_number"]
    teacher = session.scalar(
        select(Teacher).where(Teacher.school_id == school.id, Teacher.staff_number == staff_number)
    )
    wanted: dict[str, Any] = {"name": values["name"], "active": True}
    for name in ("subject", "grade"):
        if name in values:
            wanted[name] = values[name] or None
    if "roles" in values:
        wanted["roles"] = row.roles or ["teacher"]
    group_name = values.get("research_group") or ""
    if teacher is None:
        roles = wanted.pop("roles", ["teacher"])
        teacher = Teacher(school_id=school.id, staff_number=staff_number,
                          roles=[TeacherRole(role=role) for role in roles], **wanted)
        session.add(teacher)
        session.flush()
        _join_group(session, school, teacher, group_name)
        announce_teacher(session, "teacher.joined", teacher)
        return "created"
    before = teacher_out(session, teacher)
    joined_group = _join_group(session, school, teacher, group_name)
    after = apply_teacher_changes(session, teacher, wanted)
    if after == before:
        return "unchanged"
    if joined_group and after == {**before, "group_ids": after["group_ids"]}:
        announce_teacher(session, "teacher.changed", teacher)
    return "updated"


def _join_group(session: Session, school: School, teacher: Teacher, group_name: str) -> bool:
    """Put the teacher in the school's research group of that name (created on first use)."""
    if not group_name:
        return False
    group = session.scalar(
        select(Group).where(Group.school_id == school.id, Group.kind == "research", Group.name == group_name)
    )
    if group is None:
        group = Group(bureau_id=school.bureau_id, kind="research", school_id=school.id, name=group_name,
                      subject=teacher.subject)
        session.add(group)
        session.flush()
        outbox.add(session, "group.created", {"id": group.id, "kind": "research", "school_id": school.id,
                                               "name": group_name},
                   bureau_id=group.bureau_id, subject=f"group/{group.id}")
    if session.get(GroupMember, (group.id, teacher.id)) is not None:
        return False
    session.add(GroupMember(group_id=group.id, teacher_id=teacher.id))
    session.flush()
    return True
