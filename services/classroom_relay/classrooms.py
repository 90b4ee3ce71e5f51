"""Classrooms and their schools' internet links: registering rooms, reading them, resizing a school link.

Plain functions over a SQLAlchemy session; the caller owns the transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.classroom_relay import link_budgets, schemas, tracks
from services.classroom_relay.exceptions import (
    Conflict,
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
from services.classroom_relay.school_facts import Facts, school_in_scope
from services.common.db import flush_or_conflict
from services.common.scope import Scope
from services.common.validation import load


def _tracks(values: dict[str, Any]) -> list[dict[str, Any]] | None:
    if values["tracks"] is None:
        return None
    try:
        return tracks.completed(values["tracks"], ())
    except ValueError as error:
        raise InvalidInput(f"Unplayable track: {error}.", {"tracks": [str(error)]}) from None


def create_classroom(session: Session, scope: Scope, data: dict[str, Any], facts: Facts) -> dict[str, Any]:
    """Register a classroom of a school accounts confirms is in the caller's scope, with accounts' bureau,
    district and link (values in the body must agree with accounts; they are never taken from it)."""
    values = load(schemas.ClassroomIn(), data)
    scope.require_write()
    known = school_in_scope(facts, scope, values["school_id"])
    disagreeing = {
        name: known[fact] for name, fact in (("bureau_id", "bureau_id"), ("district_id", "district_id"),
                                             ("school_link_capacity_bps", "link_capacity_bps"))
        if values[name] is not None and values[name] != known[fact]
    }
    if disagreeing:
        raise InvalidInput(
            f"School {values['school_id']}'s facts come from accounts and differ from the request: "
            + ", ".join(f"{name} is {value}" for name, value in disagreeing.items()) + ".",
            {name: [f"Accounts says {value}."] for name, value in disagreeing.items()},
        )
    room_tracks = _tracks(values)
    school = session.get(RelaySchool, values["school_id"], with_for_update=True)
    if school is None:
        school = RelaySchool(id=values["school_id"])
        session.add(school)
    # The relay's copy follows accounts (a school's link may have been resized there).
    school.bureau_id, school.district_id = known["bureau_id"], known["district_id"]
    school.link_capacity_bps = known["link_capacity_bps"] or DEFAULT_MASTER_SCHOOL_LINK_BPS
    room = Classroom(
        school_id=school.id,
        name=values["name"],
        kind=values["kind"],
        uplink_capacity_bps=values["uplink_capacity_bps"] or DEFAULT_UPLINK_BPS,
        downlink_capacity_bps=values["downlink_capacity_bps"] or DEFAULT_DOWNLINK_BPS,
        receive_host=values["receive_host"],
        receive_port=values["receive_port"],
        tracks=room_tracks,
    )
    session.add(room)
    flush_or_conflict(session, f"School {school.id} already has a classroom named {values['name']!r}.")
    session.refresh(room)
    return dump_classroom(room)


def set_school_link(
    session: Session, scope: Scope, school_id: Any, link_capacity_bps: Any, facts: Facts
) -> dict[str, Any]:
    """Follow a school's link resized in accounts (e.g. after its school.changed); never below what is
    committed now. The new value must be what accounts says: accounts owns the school."""
    school = session.get(RelaySchool, require_id(school_id, "School"), with_for_update=True)
    if school is None or not scope.covers_school(school.bureau_id, school.district_id, school.id):
        raise NotFound(f"School {school_id} has no classrooms in the relay in this token's scope.")
    scope.require_write()
    if not isinstance(link_capacity_bps, int) or isinstance(link_capacity_bps, bool) or link_capacity_bps < MBIT:
        raise InvalidInput("link_capacity_bps must be an integer of at least 1 000 000.")
    known = school_in_scope(facts, scope, school.id)
    if known["link_capacity_bps"] != link_capacity_bps:
        raise Conflict(
            f"Accounts has school {school.id}'s link at {link_budgets.mbit(known['link_capacity_bps'])}; "
            "change it there first.", {"link_capacity_bps": known["link_capacity_bps"]},
        )
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
