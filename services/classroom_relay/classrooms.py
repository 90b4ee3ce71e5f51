"""Classrooms and their schools' internet links: registering rooms, reading them, resizing a school link.

Plain functions over a SQLAlchemy session; the caller owns the transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.classroom_relay import link_budgets, schemas
from services.classroom_relay.exceptions import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
)
from services.classroom_relay.lessons import committed_loads
from services.classroom_relay.models import (
    DEFAULT_DOWNLINK_BPS,
    DEFAULT_MASTER_SCHOOL_LINK_BPS,
    DEFAULT_UPLINK_BPS,
    MBIT,
    Classroom,
    RelaySchool,
)
from services.classroom_relay.records import covers, dump_classroom, get_room, require_id
from services.common.db import flush_or_conflict
from services.common.scope import Scope
from services.common.validation import load


def create_classroom(session: Session, scope: Scope, data: dict[str, Any]) -> dict[str, Any]:
    values = load(schemas.ClassroomIn(), data)
    scope.require_write()
    if not scope.covers_school(values["bureau_id"], values["district_id"], values["school_id"]):
        raise Forbidden(f"School {values['school_id']} is outside this token's scope ({scope.describe()}).")
    school = session.get(RelaySchool, values["school_id"], with_for_update=True)
    link = values["school_link_capacity_bps"]
    if school is None:
        school = RelaySchool(
            id=values["school_id"],
            bureau_id=values["bureau_id"],
            district_id=values["district_id"],
            link_capacity_bps=link or DEFAULT_MASTER_SCHOOL_LINK_BPS,
        )
        session.add(school)
    elif school.bureau_id != values["bureau_id"]:
        raise Conflict(f"School {school.id} is already registered in bureau {school.bureau_id}.")
    elif link is not None and link != school.link_capacity_bps:
        raise Conflict(
            f"School {school.id}'s link is registered as {link_budgets.mbit(school.link_capacity_bps)}, "
            f"not {link_budgets.mbit(link)}; change it with set_school_link.",
            {"school_link_capacity_bps": school.link_capacity_bps},
        )
    room = Classroom(
        school_id=school.id,
        name=values["name"],
        kind=values["kind"],
        uplink_capacity_bps=values["uplink_capacity_bps"] or DEFAULT_UPLINK_BPS,
        downlink_capacity_bps=values["downlink_capacity_bps"] or DEFAULT_DOWNLINK_BPS,
        receive_host=values["receive_host"],
        receive_port=values["receive_port"],
    )
    session.add(room)
    flush_or_conflict(session, f"School {school.id} already has a classroom named {values['name']!r}.")
    session.refresh(room)
    return dump_classroom(room)


def set_school_link(session: Session, scope: Scope, school_id: Any, link_capacity_bps: Any) -> dict[str, Any]:
    """Change a school's link (e.g. after accounts' school.changed); never below what is committed now."""
    school = session.get(RelaySchool, require_id(school_id, "School"), with_for_update=True)
    if school is None or school.bureau_id != scope.bureau_id:
        raise NotFound(f"School {school_id} has no classrooms in the relay.")
    scope.require_write()
    if not scope.covers_school(school.bureau_id, school.district_id, school.id):
        raise Forbidden(f"School {school_id} is outside this token's scope ({scope.describe()}).")
    if not isinstance(link_capacity_bps, int) or isinstance(link_capacity_bps, bool) or link_capacity_bps < MBIT:
        raise InvalidInput("link_capacity_bps must be an integer of at least 1 000 000.")
    in_use = link_budgets.total_by_link(committed_loads(session)).get(link_budgets.school_link(school.id), 0)
    if in_use > link_capacity_bps:
        raise Conflict(
            f"School {school.id} has {link_budgets.mbit(in_use)} committed now; "
            f"its link cannot shrink to {link_budgets.mbit(link_capacity_bps)} during live sessions."
        )
    school.link_capacity_bps = link_capacity_bps
    return {"school_id": school.id, "link_capacity_bps": link_capacity_bps}


def get_classroom(session: Session, scope: Scope, classroom_id: Any) -> dict[str, Any]:
    room = get_room(session, scope, classroom_id)
    if not covers(scope, room):
        raise NotFound(f"Classroom {classroom_id} does not exist.")
    return dump_classroom(room)


def list_classrooms(session: Session, scope: Scope, school_id: int | None = None) -> list[dict[str, Any]]:
    query = select(Classroom).join(RelaySchool).where(RelaySchool.bureau_id == scope.bureau_id)
    if school_id is not None:
        query = query.where(Classroom.school_id == require_id(school_id, "School"))
    rooms = session.scalars(query.order_by(Classroom.id)).all()
    return [dump_classroom(room) for room in rooms if covers(scope, room)]
