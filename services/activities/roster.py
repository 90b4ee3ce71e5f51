"""The teachers activities knows about, kept from accounts' `teacher.joined/changed/left` events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.activities.exceptions import Forbidden, InvalidInput, UnknownTeacher
from services.activities.models import RosterTeacher
from services.common.scope import Scope
from services.common.timeutil import as_utc

TEACHER_EVENT_KEYS = ("teacher.joined", "teacher.changed", "teacher.left")


def _as_int(data: dict[str, Any], name: str, *, optional: bool = False) -> int | None:
    value = data.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"Teacher event field {name!r} must be an integer.", {name: ["Not an integer."]})
    return value


def _parse_time(value: Any) -> datetime:
    if not value:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as error:
        raise InvalidInput(f"Event time {value!r} is not ISO 8601.") from error
    return as_utc(parsed)


def apply_teacher_event(session: Session, routing_key: str, body: dict[str, Any], event_time: Any = None) -> bool:
    """Apply one accounts event; False when it is older than what is already known (out of order).

    One upsert guarded by the announcement time, not a look-up then an insert: two transactions applying
    `teacher.joined` and `teacher.changed` of a new teacher at once (two activities processes) would both
    find no row and the second insert would fail on the primary key.
    """
    teacher_id = _as_int(body, "id")
    announced_at = _parse_time(event_time)
    values = {
        "school_id": _as_int(body, "school_id"),
        "district_id": _as_int(body, "district_id", optional=True),
        "bureau_id": _as_int(body, "bureau_id"),
        "active": routing_key != "teacher.left" and bool(body.get("active", True)),
        "roles": json.dumps(sorted(str(role) for role in body.get("roles") or [])),
        "group_ids": json.dumps(sorted(int(group) for group in body.get("group_ids") or [])),
        "announced_at": announced_at,
    }
    table = RosterTeacher.metadata.tables[RosterTeacher.__tablename__]
    insert = (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(table)
    statement = insert.values(id=teacher_id, **values).on_conflict_do_update(
        index_elements=[table.c.id], set_=values,
        where=table.c.announced_at <= insert.excluded.announced_at,  # an older announcement never overwrites
    ).returning(table.c.id)
    applied = session.execute(statement).first() is not None
    known = session.identity_map.get(session.identity_key(RosterTeacher, teacher_id))
    if applied and known is not None:
        session.expire(known)  # the row changed underneath the session's copy
    return applied


def teacher_in_scope(session: Session, scope: Scope, teacher_id: int) -> RosterTeacher:
    return check_teacher_scope(session.get(RosterTeacher, teacher_id), scope, teacher_id)


def teachers_by_id(session: Session, teacher_ids: set[int]) -> dict[int, RosterTeacher]:
    """Many teachers in one query (a batch's)."""
    if not teacher_ids:
        return {}
    query = select(RosterTeacher).where(RosterTeacher.id.in_(sorted(teacher_ids)))
    return {teacher.id: teacher for teacher in session.scalars(query)}


def check_teacher_scope(teacher: RosterTeacher | None, scope: Scope, teacher_id: int) -> RosterTeacher:
    """The teacher must be known and inside the caller's scope; another bureau's is answered as unknown."""
    if teacher is None or teacher.bureau_id != scope.bureau_id:
        raise UnknownTeacher(
            f"Teacher {teacher_id} is not known to activities (accounts has not announced them yet).",
            {"teacher_id": ["Unknown teacher."]},
        )
    if not scope.covers_school(teacher.bureau_id, teacher.district_id, teacher.school_id):
        raise Forbidden(f"Teacher {teacher_id} is outside this token's scope ({scope.describe()}).")
    return teacher


def roles_of(teacher: RosterTeacher) -> list[str]:
    return list(json.loads(teacher.roles or "[]"))


def groups_of(teacher: RosterTeacher) -> list[int]:
    return list(json.loads(teacher.group_ids or "[]"))
