"""The organisation directory: bureaus, districts, schools, alliances, teachers and groups.

Plain functions over a SQLAlchemy session; the caller owns the transaction. Every change that others
react to is added to the outbox in the same transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.accounts import schemas
from services.accounts.exceptions import Conflict, Forbidden, InvalidInput, NotFound
from services.accounts.models import (
    Alliance,
    AllianceMember,
    Bureau,
    District,
    Group,
    GroupMember,
    School,
    Teacher,
    TeacherRole,
    outbox,
)
from services.common.db import flush_or_conflict
from services.common.scope import Scope
from services.common.validation import load

BUREAU_OUT = schemas.BureauOut()
DISTRICT_OUT = schemas.DistrictOut()
SCHOOL_OUT = schemas.SchoolOut()
ALLIANCE_OUT = schemas.AllianceOut()
TEACHER_OUT = schemas.TeacherOut()
GROUP_OUT = schemas.GroupOut()


def _get(session: Session, model: type, ident: Any, what: str, bureau_id: int | None = None) -> Any:
    """The row, or `NotFound`; with `bureau_id`, another bureau's row is answered exactly like a missing
    one (issue 12, item 15: a 403 for "not yours" beside a 404 for "not there" told which ids exist)."""
    if not isinstance(ident, int) or isinstance(ident, bool):
        raise InvalidInput(f"{what} id must be an integer.")
    instance = session.get(model, ident) if 0 < ident <= schemas.MAX_ID else None
    if instance is None or (bureau_id is not None and _bureau_of(session, instance) != bureau_id):
        raise NotFound(f"{what} {ident} does not exist.")
    return instance


def _bureau_of(session: Session, instance: Any) -> int | None:
    if isinstance(instance, Bureau):
        return instance.id
    if isinstance(instance, Teacher):
        school = session.get(School, instance.school_id)
        return school.bureau_id if school is not None else None
    return getattr(instance, "bureau_id", None)


# --- bureaus and districts ---------------------------------------------------------------------------


def create_bureau(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    """Bureaus are created by operators (command line), not through a token."""
    values = load(schemas.BureauIn(), data)
    existing = session.scalar(select(Bureau).where(Bureau.code == values["code"]))
    if existing is not None:
        if existing.name == values["name"]:
            return BUREAU_OUT.dump(existing)
        raise Conflict(f"Bureau code {values['code']!r} is already used by {existing.name!r}.")
    bureau = Bureau(**values)
    session.add(bureau)
    flush_or_conflict(session, f"Bureau code {values['code']!r} is already used.")
    outbox.add(session, "bureau.created", BUREAU_OUT.dump(bureau), bureau_id=bureau.id, subject=f"bureau/{bureau.id}")
    return BUREAU_OUT.dump(bureau)


def get_bureau(session: Session, scope: Scope, bureau_id: int) -> dict[str, Any]:
    return BUREAU_OUT.dump(_get(session, Bureau, bureau_id, "Bureau", scope.bureau_id))


def find_bureau(session: Session, code: str) -> dict[str, Any]:
    bureau = session.scalar(select(Bureau).where(Bureau.code == code))
    if bureau is None:
        raise NotFound(f"No bureau has the code {code!r}.")
    return BUREAU_OUT.dump(bureau)


def create_district(session: Session, scope: Scope, data: dict[str, Any]) -> dict[str, Any]:
    values = load(schemas.DistrictIn(), data)
    _require_bureau_write(scope, values["bureau_id"])
    _get(session, Bureau, values["bureau_id"], "Bureau")
    district = District(**values)
    session.add(district)
    flush_or_conflict(session, f"A district named {values['name']!r} already exists in this bureau.")
    outbox.add(session, "district.created", DISTRICT_OUT.dump(district), bureau_id=district.bureau_id,
               subject=f"district/{district.id}")
    return DISTRICT_OUT.dump(district)


def list_districts(session: Session, scope: Scope) -> list[dict[str, Any]]:
    query = select(District).where(District.bureau_id == scope.bureau_id).order_by(District.id)
    if scope.kind == "district":
        query = query.where(District.id == scope.id)
    elif scope.kind == "school":
        school = session.get(School, scope.id)
        query = query.where(District.id == (school.district_id if school else None))
    return [DISTRICT_OUT.dump(district) for district in session.scalars(query)]


def _require_bureau_write(scope: Scope, bureau_id: int) -> None:
    scope.require_write()
    if not scope.covers_bureau(bureau_id):
        raise Forbidden(f"Only a bureau token of bureau {bureau_id} may do this (this token: {scope.describe()}).")


# --- schools and alliances ---------------------------------------------------------------------------


def school_in_scope(session: Session, scope: Scope, school_id: Any) -> School:
    school = _get(session, School, school_id, "School", scope.bureau_id)
    if not scope.covers_school(school.bureau_id, school.district_id, school.id):
        raise Forbidden(f"School {school_id} is outside this token's scope ({scope.describe()}).")
    return school


def create_school(session: Session, scope: Scope, data: dict[str, Any]) -> dict[str, Any]:
    values = load(schemas.SchoolIn(), data)
    _require_bureau_write(scope, values["bureau_id"])
    if values["district_id"] is not None:
        _get(session, District, values["district_id"], "District", values["bureau_id"])
    if values["link_capacity_bps"] is None:
        is_master = values["kind"] == "master"
        values["link_capacity_bps"] = schemas.DEFAULT_MASTER_LINK_BPS if is_master else schemas.DEFAULT_SCHOOL_LINK_BPS
    school = School(**values)
    session.add(school)
    flush_or_conflict(session, f"School code {values['code']!r} is already used in this bureau.")
    outbox.add(session, "school.created", SCHOOL_OUT.dump(school), bureau_id=school.bureau_id,
               subject=f"school/{school.id}")
    return SCHOOL_OUT.dump(school)


def get_school(session: Session, scope: Scope, school_id: int) -> dict[str, Any]:
    return SCHOOL_OUT.dump(school_in_scope(session, scope, school_id))


def list_schools(session: Session, scope: Scope) -> list[dict[str, Any]]:
    query = select(School).where(School.bureau_id == scope.bureau_id).order_by(School.id)
    if scope.kind == "district":
        query = query.where(School.district_id == scope.id)
    elif scope.kind == "school":
        query = query.where(School.id == scope.id)
    return [SCHOOL_OUT.dump(school) for school in session.scalars(query)]


def _alliance_out(alliance: Alliance) -> dict[str, Any]:
    data = ALLIANCE_OUT.dump(alliance)
    data["member_school_ids"] = sorted(member.school_id for member in alliance.members)
    return data


def create_alliance(session: Session, scope: Scope, data: dict[str, Any]) -> dict[str, Any]:
    values = load(schemas.AllianceIn(), data)
    _require_bureau_write(scope, values["bureau_id"])
    member_ids = set(values.pop("member_school_ids")) | {values["lead_school_id"]}
    for school_id in sorted(member_ids):
        _get(session, School, school_id, "School", values["bureau_id"])
    alliance = Alliance(**values, members=[AllianceMember(school_id=sid) for sid in sorted(member_ids)])
    session.add(alliance)
    flush_or_conflict(session, f"An alliance named {values['name']!r} already exists in this bureau.")
    result = _alliance_out(alliance)
    outbox.add(session, "alliance.created", result, bureau_id=alliance.bureau_id, subject=f"alliance/{alliance.id}")
    for school_id in sorted(member_ids):
        outbox.add(
            session, "school.joined_alliance",
            {"alliance_id": alliance.id, "school_id": school_id, "lead": school_id == alliance.lead_school_id},
            bureau_id=alliance.bureau_id, subject=f"school/{school_id}",
        )
    return result


def add_alliance_member(session: Session, scope: Scope, alliance_id: int, school_id: int) -> dict[str, Any]:
    alliance = _get(session, Alliance, alliance_id, "Alliance", scope.bureau_id)
    _require_bureau_write(scope, alliance.bureau_id)
    _get(session, School, school_id, "School", alliance.bureau_id)
    if all(member.school_id != school_id for member in alliance.members):
        alliance.members.append(AllianceMember(school_id=school_id))
        flush_or_conflict(session, "The school is already a member.")
        outbox.add(
            session, "school.joined_alliance",
            {"alliance_id": alliance.id, "school_id": school_id, "lead": False},
            bureau_id=alliance.bureau_id, subject=f"school/{school_id}",
        )
    return _alliance_out(alliance)


def list_alliances(session: Session, scope: Scope) -> list[dict[str, Any]]:
    alliances = session.scalars(select(Alliance).where(Alliance.bureau_id == scope.bureau_id).order_by(Alliance.id))
    visible = []
    for alliance in alliances:
        if scope.kind == "bureau" or any(
            _school_visible(session, scope, member.school_id) for member in alliance.members
        ):
            visible.append(_alliance_out(alliance))
    return visible


def _school_visible(session: Session, scope: Scope, school_id: int) -> bool:
    school = session.get(School, school_id)
    return school is not None and scope.covers_school(school.bureau_id, school.district_id, school.id)


# --- teachers and groups -----------------------------------------------------------------------------


def group_ids_of(session: Session, teacher_ids: list[int]) -> dict[int, list[int]]:
    """Every listed teacher's groups in one query (a query per teacher made listing a school slow)."""
    groups: dict[int, list[int]] = {teacher_id: [] for teacher_id in teacher_ids}
    if teacher_ids:
        rows = session.execute(
            select(GroupMember.teacher_id, GroupMember.group_id)
            .where(GroupMember.teacher_id.in_(teacher_ids))
            .order_by(GroupMember.group_id)
        )
        for teacher_id, group_id in rows:
            groups[teacher_id].append(group_id)
    return groups


def teacher_out(session: Session, teacher: Teacher, group_ids: list[int] | None = None) -> dict[str, Any]:
    data = TEACHER_OUT.dump(teacher)
    data["roles"] = sorted(role.role for role in teacher.roles)
    data["group_ids"] = group_ids if group_ids is not None else group_ids_of(session, [teacher.id])[teacher.id]
    return data


def teacher_event(session: Session, teacher: Teacher) -> dict[str, Any]:
    """What subscribers learn of a teacher: enough for reporting to keep its own roster."""
    school = session.get(School, teacher.school_id)
    data = teacher_out(session, teacher)
    data.pop("name", None)  # names stay in accounts; the roster is keyed by id
    data["district_id"] = school.district_id if school else None
    data["bureau_id"] = school.bureau_id if school else None
    return data


def announce_teacher(session: Session, event_type: str, teacher: Teacher) -> None:
    """Add a `teacher.*` event (routed to the teacher's bureau) to the outbox."""
    event = teacher_event(session, teacher)
    outbox.add(session, event_type, event, bureau_id=event["bureau_id"], subject=f"teacher/{teacher.id}")


def create_teacher(session: Session, scope: Scope, data: dict[str, Any]) -> dict[str, Any]:
    values = load(schemas.TeacherIn(), data)
    scope.require_write()
    school_in_scope(session, scope, values["school_id"])
    roles = sorted(set(values.pop("roles")) or {"teacher"})
    teacher = Teacher(**values, active=True, roles=[TeacherRole(role=role) for role in roles])
    session.add(teacher)
    flush_or_conflict(
        session, f"Staff number {values['staff_number']!r} already exists in school {values['school_id']}."
    )
    announce_teacher(session, "teacher.joined", teacher)
    return teacher_out(session, teacher)


def teacher_in_scope(session: Session, scope: Scope, teacher_id: Any) -> Teacher:
    teacher = _get(session, Teacher, teacher_id, "Teacher", scope.bureau_id)
    school_in_scope(session, scope, teacher.school_id)
    return teacher


def get_teacher(session: Session, scope: Scope, teacher_id: int) -> dict[str, Any]:
    return teacher_out(session, teacher_in_scope(session, scope, teacher_id))


def update_teacher(session: Session, scope: Scope, teacher_id: int, data: dict[str, Any]) -> dict[str, Any]:
    values = load(schemas.TeacherUpdate(), data)
    scope.require_write()
    teacher = teacher_in_scope(session, scope, teacher_id)
    return apply_teacher_changes(session, teacher, values)


def apply_teacher_changes(session: Session, teacher: Teacher, values: dict[str, Any]) -> dict[str, Any]:
    """Apply validated changes; publish joined/left/changed only when something really changed."""
    before = teacher_out(session, teacher)
    roles = values.pop("roles", None)
    for name, value in values.items():
        setattr(teacher, name, value)
    if roles is not None and sorted(set(roles)) != before["roles"]:
        teacher.roles = [TeacherRole(role=role) for role in sorted(set(roles))]
    session.flush()
    after = teacher_out(session, teacher)
    if after != before:
        if before["active"] and not after["active"]:
            routing_key = "teacher.left"
        elif not before["active"] and after["active"]:
            routing_key = "teacher.joined"
        else:
            routing_key = "teacher.changed"
        announce_teacher(session, routing_key, teacher)
    return after


def list_teachers(
    session: Session, scope: Scope, school_id: int, *, limit: int = 100, after_id: int = 0,
    include_inactive: bool = False,
) -> dict[str, Any]:
    """A page of a school's teachers, ordered by id; `next_after_id` is the cursor of the next page."""
    page = load(schemas.PageIn(), {"limit": limit, "after_id": after_id})
    school_in_scope(session, scope, school_id)
    query = (
        select(Teacher)
        .where(Teacher.school_id == school_id, Teacher.id > page["after_id"])
        .order_by(Teacher.id)
        .limit(page["limit"] + 1)
    )
    if not include_inactive:
        query = query.where(Teacher.active.is_(True))
    teachers = list(session.scalars(query))
    has_more = len(teachers) > page["limit"]
    teachers = teachers[: page["limit"]]
    groups = group_ids_of(session, [teacher.id for teacher in teachers])
    return {
        "items": [teacher_out(session, teacher, groups[teacher.id]) for teacher in teachers],
        "next_after_id": teachers[-1].id if has_more else None,
    }


def group_out(group: Group) -> dict[str, Any]:
    data = GROUP_OUT.dump(group)
    data["member_ids"] = sorted(member.teacher_id for member in group.members)
    return data


def create_group(session: Session, scope: Scope, data: dict[str, Any]) -> dict[str, Any]:
    values = load(schemas.GroupIn(), data)
    scope.require_write()
    if values["kind"] == "research":
        if values["school_id"] is None:
            raise InvalidInput(
                "A research group belongs to one school.", {"school_id": ["Required for research groups."]}
            )
        school_in_scope(session, scope, values["school_id"])
    elif not scope.covers_bureau(values["bureau_id"]):
        raise Forbidden("Cross-school groups and studios are created by a bureau token.")
    member_ids = set(values.pop("member_ids"))
    if values["leader_id"] is not None:
        member_ids.add(values["leader_id"])
    for teacher_id in sorted(member_ids):
        teacher = teacher_in_scope(session, scope, teacher_id)
        if values["kind"] == "research" and teacher.school_id != values["school_id"]:
            raise InvalidInput(f"Teacher {teacher_id} is not in school {values['school_id']}.")
    group = Group(**values, members=[GroupMember(teacher_id=tid) for tid in sorted(member_ids)])
    session.add(group)
    flush_or_conflict(session, f"A {values['kind']} group named {values['name']!r} already exists.")
    result = group_out(group)
    outbox.add(session, "group.created", result, bureau_id=group.bureau_id, subject=f"group/{group.id}")
    for teacher_id in sorted(member_ids):
        announce_teacher(session, "teacher.changed", _get(session, Teacher, teacher_id, "Teacher"))
    return result


def list_groups(session: Session, scope: Scope, school_id: int | None = None) -> list[dict[str, Any]]:
    query = select(Group).where(Group.bureau_id == scope.bureau_id).order_by(Group.id)
    if school_id is not None:
        school_in_scope(session, scope, school_id)
        query = query.where(Group.school_id == school_id)
    groups = session.scalars(query)
    return [
        group_out(group) for group in groups
        if group.school_id is None or _school_visible(session, scope, group.school_id)
    ]


def school_facts(session: Session, scope: Scope, school_ids: Any) -> dict[int, dict[str, Any]]:
    """`{id: {"id", "bureau_id", "district_id", "link_capacity_bps"}}` of the listed schools the scope covers.

    A school outside the scope and one that does not exist are both simply absent: the caller answers
    "not yours" and "not there" alike.
    """
    values = load(schemas.SchoolFactsIn(), {"school_ids": school_ids})
    wanted = sorted(set(values["school_ids"]))
    if not wanted:
        return {}
    query = select(School).where(School.id.in_(wanted), School.bureau_id == scope.bureau_id)
    out = schemas.SchoolFactsOut()
    return {
        school.id: out.dump(school)
        for school in session.scalars(query)
        if scope.covers_school(school.bureau_id, school.district_id, school.id)
    }


def teacher_names(session: Session, scope: Scope, teacher_ids: Any) -> dict[int, dict[str, Any]]:
    """Names of the listed teachers the scope may see: `{id: {"name", "staff_number", "school_id"}}`.

    Events carry no names (other bureaus subscribe to them), so reports ask here for the few they list.
    Ids outside the scope, of another bureau or unknown are left out rather than failing the batch: a
    report's read model may lag a teacher's move, and one such teacher must not cost every other name.
    Teachers who have left are included (a past bulletin still names them).
    """
    values = load(schemas.TeacherNamesIn(), {"teacher_ids": teacher_ids})
    wanted = sorted(set(values["teacher_ids"]))
    if not wanted:
        return {}
    query = (
        select(Teacher.id, Teacher.name, Teacher.staff_number, Teacher.school_id, School.district_id)
        .join(School, School.id == Teacher.school_id)
        .where(Teacher.id.in_(wanted), School.bureau_id == scope.bureau_id)
    )
    return {
        teacher_id: {"name": name, "staff_number": staff_number, "school_id": school_id}
        for teacher_id, name, staff_number, school_id, district_id in session.execute(query)
        if scope.covers_school(scope.bureau_id, district_id, school_id)
    }
