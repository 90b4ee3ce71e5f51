"""Roster import from CSV or XLSX: all-or-nothing per file, every problem listed by row and column.

Schools keep rosters in Excel with Chinese headers, so both English and Chinese column names are
accepted, CSV may be UTF-8 (with or without BOM) or GB18030, and re-importing the same file changes
nothing. Teachers absent from the file are left as they are (leaving is an explicit change).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.accounts.directory import apply_teacher_changes, group_out, school_in_scope, teacher_event, teacher_out
from services.accounts.exceptions import InvalidInput, RosterRejected
from services.accounts.models import Group, GroupMember, School, Teacher, TeacherRole, outbox
from services.accounts.roster_files import MAX_FILE_BYTES, MAX_ROWS, read_table
from services.accounts.schemas import ROLES
from services.common.scope import Scope
from services.common.validation import name_problem, normalise_code

__all__ = ["MAX_FILE_BYTES", "MAX_ROWS", "import_roster", "parse_rows", "read_table"]

COLUMNS: dict[str, tuple[str, ...]] = {
    "staff_number": ("staff_number", "工号", "教师编号", "编号"),
    "name": ("name", "姓名"),
    "subject": ("subject", "学科", "任教学科"),
    "grade": ("grade", "年级", "任教年级"),
    "roles": ("roles", "角色", "职务"),
    "research_group": ("research_group", "教研组", "年组"),
}
REQUIRED = ("staff_number", "name")
# The documents' own words for roles (000, 001, 003), each mapped to the platform role whose quotas
# apply; the English role names are accepted as they are. Deputies count with the office they deputise
# for, since document 001 sets their quotas together (e.g. the principal, deputy principal in charge of
# teaching and dean of studies all observe >= 30 lessons in its fifth plan).
ROLE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "teacher": ("教师", "任课教师", "专任教师", "骨干教师", "学科带头人"),
    "group_leader": ("组长", "教研组长", "备课组长", "年组长", "学科组长", "研修组长", "协作组长"),
    "blog_host": ("博主",),
    "moderator": ("主持人",),
    "middle_manager": ("中层", "中层干部", "中层领导"),
    "dean": ("主任", "教导主任", "教务主任", "教导处主任", "教务处主任", "副主任", "教导副主任"),
    "principal": ("校长", "副校长", "主管教学副校长", "教学副校长", "业务校长"),
    "researcher": ("教研员",),
    "centre_member": ("研训中心成员", "片级研训中心成员", "研训组成员"),
    "bureau_admin": ("管理员",),
}
ROLE_LABELS: dict[str, str] = {
    **{label: role for role, labels in ROLE_SYNONYMS.items() for label in labels},
    **{role: role for role in ROLES},
}


def accepted_roles() -> str:
    """The accepted role names, as an error lists them: `教师/任课教师/… (teacher); …`."""
    return "; ".join(f"{'/'.join(labels)} ({role})" for role, labels in ROLE_SYNONYMS.items())


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
    leaders: dict[str, int] = {}  # research group -> the row naming its leader
    for number, cells in enumerate(table[1:], start=2):
        values = {name: (cells[index].strip() if index < len(cells) else "") for name, index in positions.items()}
        row = RosterRow(number, values)
        for name in REQUIRED:
            if not values.get(name):
                problems.append({"row": number, "column": name, "reason": "Empty; a value is required."})
        staff_number = values["staff_number"] = normalise_code(values.get("staff_number", ""))
        if len(staff_number) > 40 or len(values.get("name", "")) > 100:
            problems.append({"row": number, "column": "staff_number/name", "reason": "Too long."})
        problems += [{"row": number, "column": column, "reason": reason}
                     for column in ("staff_number", "name") if (reason := name_problem(values.get(column, "")))]
        if staff_number and staff_number in seen:
            problems.append({"row": number, "column": "staff_number",
                             "reason": f"Duplicate staff number {staff_number!r} (also row {seen[staff_number]})."})
        seen.setdefault(staff_number, number)
        for label in _split_roles(values.get("roles", "")):
            role = ROLE_LABELS.get(label)
            if role is None:
                problems.append({"row": number, "column": "roles",
                                 "reason": f"Unknown role {label!r}; accepted: {accepted_roles()}."})
            elif role not in row.roles:
                row.roles.append(role)
        group_name = values.get("research_group", "")
        if "group_leader" in row.roles and group_name:
            if group_name in leaders:
                problems.append({"row": number, "column": "roles", "reason":
                                 f"A second 组长 (group leader) for {group_name!r} (also row {leaders[group_name]})."})
            leaders.setdefault(group_name, number)
        rows.append(row)
    return rows, problems


def _split_roles(text: str) -> list[str]:
    for separator in ("；", "，", "、", ",", "|"):
        text = text.replace(separator, ";")
    return [part.strip() for part in text.split(";") if part.strip()]


def import_roster(
    session: Session, scope: Scope, school_id: int, filename: str, content: bytes,
    progress: Callable[[int, int], None] | None = None,
    reader: Callable[[str, bytes], list[list[str]]] = read_table,
) -> dict[str, Any]:
    """Apply a roster file to one school; raises `RosterRejected` (applying nothing) on any problem.

    `reader` turns the file into cells (the service passes `read_table_isolated`: a child process)."""
    scope.require_write()
    school = school_in_scope(session, scope, school_id)
    rows, problems = parse_rows(reader(filename, content))
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
    leads = "group_leader" in row.roles if "roles" in values else None  # None: the file says nothing of roles
    if teacher is None:
        roles = wanted.pop("roles", ["teacher"])
        teacher = Teacher(school_id=school.id, staff_number=staff_number,
                          roles=[TeacherRole(role=role) for role in roles], **wanted)
        session.add(teacher)
        session.flush()
        _join_group(session, school, teacher, group_name, leads)
        outbox.add(session, "teacher.joined", teacher_event(session, teacher), subject=f"teacher/{teacher.id}")
        return "created"
    before = teacher_out(session, teacher)
    led_before = _leader_of(session, school, group_name)
    joined_group = _join_group(session, school, teacher, group_name, leads)
    after = apply_teacher_changes(session, teacher, wanted)
    if after == before and led_before == _leader_of(session, school, group_name):
        return "unchanged"
    if joined_group and after == {**before, "group_ids": after["group_ids"]}:
        outbox.add(session, "teacher.changed", teacher_event(session, teacher), subject=f"teacher/{teacher.id}")
    return "updated"


def _research_group(session: Session, school: School, group_name: str) -> Group | None:
    return session.scalar(
        select(Group).where(Group.school_id == school.id, Group.kind == "research", Group.name == group_name)
    )


def _leader_of(session: Session, school: School, group_name: str) -> int | None:
    group = _research_group(session, school, group_name) if group_name else None
    return group.leader_id if group is not None else None


def _join_group(session: Session, school: School, teacher: Teacher, group_name: str, leads: bool | None) -> bool:
    """Put the teacher in the school's research group of that name (created on first use).

    A 组长 (group leader) in the roster becomes the group's leader; a leader whose row no longer says
    组长 stops being it. The group's event is the same
    body `POST /v1/groups` publishes (with `bureau_id`, `leader_id`, `member_ids`), so every
    subscriber reads groups from either path alike.
    """
    if not group_name:
        return False
    group = _research_group(session, school, group_name)
    created = group is None
    if group is None:
        group = Group(bureau_id=school.bureau_id, kind="research", school_id=school.id, name=group_name,
                      subject=teacher.subject)
        session.add(group)
        session.flush()
    if leads:
        group.leader_id = teacher.id
    elif leads is False and group.leader_id == teacher.id:
        group.leader_id = None
    joined = session.get(GroupMember, (group.id, teacher.id)) is None
    if joined:
        session.add(GroupMember(group_id=group.id, teacher_id=teacher.id))
    session.flush()
    if created:
        session.refresh(group)
        outbox.add(session, "group.created", group_out(group), subject=f"group/{group.id}")
    return joined
