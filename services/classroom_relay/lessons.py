"""The lesson lifecycle: scheduling a live session, starting and ending it, branches joining and leaving.

Plain functions over a SQLAlchemy session; the caller owns the transaction. Every fact others react
to is added to the outbox in the same transaction. Bandwidth is committed only while a classroom is
`joined` to a live session; link_budgets.py checks it against every link the flows cross, and
placement.py picks the data plane a starting session runs on.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.classroom_relay import link_budgets, placement, schemas
from services.classroom_relay.exceptions import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
)
from services.classroom_relay.models import (
    DEFAULT_RETURN_BPS,
    DEFAULT_SOURCE_BPS,
    Classroom,
    LiveSession,
    RelaySchool,
    SessionClassroom,
    outbox,
)
from services.classroom_relay.records import (
    covers,
    dump_member,
    dump_session,
    find_member,
    get_live_session,
    get_room,
    iso,
    master_member,
    require_id,
    require_write_on,
)
from services.classroom_relay.relay_settings import RelaySettings
from services.common.scope import Scope
from services.common.timeutil import as_utc, utcnow
from services.common.validation import load

MAX_RESEARCH_CLASSROOMS = 8  # online research is "many ↔ many, small"
EARLY_START = timedelta(minutes=30)  # a lesson may be opened this long before its timetable slot


# --- link budget helpers ----------------------------------------------------------------------------------


def _room(room: Classroom) -> link_budgets.Room:
    return link_budgets.Room(room.id, room.school_id, room.uplink_capacity_bps, room.downlink_capacity_bps)


def _member_loads(live: LiveSession, member: SessionClassroom) -> list[link_budgets.Load]:
    master = _room(master_member(live).classroom)
    if member.role == "master":
        return link_budgets.source_loads(master, member.source_bps)
    return link_budgets.branch_loads(master, _room(member.classroom), member.downlink_bps, member.return_bps)


def committed_loads(session: Session, excluding_session: int | None = None) -> list[link_budgets.Load]:
    query = select(SessionClassroom).where(SessionClassroom.state == "joined")
    if excluding_session is not None:
        query = query.where(SessionClassroom.session_id != excluding_session)
    loads: list[link_budgets.Load] = []
    for member in session.scalars(query):
        loads += _member_loads(member.session, member)
    return loads


def _admit(
    session: Session,
    live: LiveSession,
    members: list[SessionClassroom],
    settings: RelaySettings,
    what: str,
    *,
    alone: bool = False,
) -> None:
    """Check `members`' flows against every link; `alone` ignores other sessions (scheduling time)."""
    requested = [load for member in members for load in _member_loads(live, member)]
    rooms = [member.classroom for member in live.members] + [member.classroom for member in members]
    school_ids = sorted({room.school_id for room in rooms})
    # Serialise admissions touching the same schools (PostgreSQL row locks; SQLite serialises writes anyway).
    schools = session.scalars(
        select(RelaySchool).where(RelaySchool.id.in_(school_ids)).order_by(RelaySchool.id).with_for_update()
    ).all()
    capacities = link_budgets.capacities_of(
        [_room(room) for room in rooms], {school.id: school.link_capacity_bps for school in schools}
    )
    if alone:
        committed = [
            load for member in live.members if member not in members and member.state != "left"
            for load in _member_loads(live, member)
        ]
    else:
        committed = committed_loads(session)
    link_budgets.check(capacities, committed, requested, headroom=settings.headroom, what=what)


def _busy_elsewhere(session: Session, classroom_id: int, session_id: int) -> int | None:
    other = session.scalar(
        select(SessionClassroom.session_id).where(
            SessionClassroom.classroom_id == classroom_id,
            SessionClassroom.state == "joined",
            SessionClassroom.session_id != session_id,
        )
    )
    return other


# --- sessions -------------------------------------------------------------------------------------------


def create_session(
    session: Session, scope: Scope, data: dict[str, Any], settings: RelaySettings
) -> dict[str, Any]:
    values = load(schemas.SessionIn(), data)
    master_room = get_room(session, scope, values["master_classroom_id"])
    require_write_on(scope, master_room, "schedule sessions in its classrooms")
    if values["kind"] != "online_research" and master_room.kind != "broadcasting":
        raise InvalidInput(
            f"Classroom {master_room.id} is a receiving classroom; a {values['kind']} session is taught "
            "from a broadcasting classroom.",
            {"master_classroom_id": ["Not a broadcasting classroom."]},
        )
    branch_ids = values.pop("branch_classroom_ids")
    if len(set(branch_ids)) != len(branch_ids) or master_room.id in branch_ids:
        raise InvalidInput("branch_classroom_ids must be distinct and not include the master classroom.")
    if values["kind"] == "dedicated_delivery" and not branch_ids:
        # 专递课堂: fixed class pairs, so the receiving classes are part of the timetable entry.
        raise InvalidInput(
            "A dedicated delivery session names its fixed branch classes when it is scheduled.",
            {"branch_classroom_ids": ["Name at least one branch classroom."]},
        )
    return_bps = values["return_bps"]
    if return_bps is None:
        # A master-teacher lesson is one → many: no camera returns unless asked for.
        return_bps = 0 if values["kind"] == "master_teacher" else DEFAULT_RETURN_BPS
    live = LiveSession(
        kind=values["kind"],
        title=values["title"],
        master_classroom_id=master_room.id,
        teacher_id=values["teacher_id"],
        status="scheduled",
        starts_at=values["starts_at"],
        ends_at=values["ends_at"],
        recurrence=values["recurrence"],
        recurrence_until=values["recurrence_until"],
        source_bps=values["source_bps"] or DEFAULT_SOURCE_BPS,
        branch_bps=values["branch_bps"],
        return_bps=return_bps,
        occurrences_held=0,
    )
    session.add(live)
    session.flush()
    master = SessionClassroom(
        session_id=live.id, classroom_id=master_room.id, role="master", state="planned",
        teacher_id=live.teacher_id, source_bps=live.source_bps, downlink_bps=0, return_bps=0,
        receive_host=master_room.receive_host, receive_port=master_room.receive_port, stream_state="ok",
    )
    session.add(master)
    session.flush()
    session.refresh(live)
    _admit(session, live, [master], settings, f"session {live.id} (broadcast from classroom {master_room.id})",
           alone=True)
    for branch_id in branch_ids:
        _plan_branch(session, scope, live, branch_id, {}, settings, scheduling=True)
    session.flush()
    session.refresh(live)
    return dump_session(live)


def get_session(session: Session, scope: Scope, session_id: Any) -> dict[str, Any]:
    return dump_session(get_live_session(session, scope, session_id))


def list_sessions(session: Session, scope: Scope, status: str | None = None) -> list[dict[str, Any]]:
    query = select(LiveSession).order_by(LiveSession.id)
    if status is not None:
        if status not in ("scheduled", "live", "ended"):
            raise InvalidInput("status must be scheduled, live or ended.")
        query = query.where(LiveSession.status == status)
    found = []
    for live in session.scalars(query):
        if any(covers(scope, member.classroom) for member in live.members):
            found.append(dump_session(live))
    return found


def _branch_member(
    session: Session, scope: Scope, live: LiveSession, classroom_id: Any, data: dict[str, Any], headroom: float,
    *, scheduling: bool = False,
) -> tuple[SessionClassroom, bool]:
    """The branch's membership row (new or re-joining), filled from `data`; (member, created).

    `scheduling`: the session is being created, so a dedicated delivery session may still name branches.
    """
    values = load(schemas.JoinIn(), data)
    room = get_room(session, scope, classroom_id)
    master_room = master_member(live).classroom
    scope.require_write()
    if not (covers(scope, room) or covers(scope, master_room)):
        raise Forbidden(f"Classroom {room.id} is outside this token's scope ({scope.describe()}).")
    if room.id == master_room.id:
        raise InvalidInput(f"Classroom {room.id} is the master classroom of session {live.id}.")
    member = find_member(live, room.id)
    if member is not None and member.state == "joined":
        return member, False
    others = [m for m in live.members if m.role == "branch" and m.state != "left" and m.classroom_id != room.id]
    if live.kind == "dedicated_delivery" and member is None and not scheduling:
        fixed = [m.classroom_id for m in live.members if m.role == "branch"]
        raise Conflict(
            f"Session {live.id} is a dedicated delivery lesson with the fixed branch classes {fixed}, named "
            f"when it was scheduled; classroom {room.id} cannot join it (schedule another session for it).",
            {"branch_classroom_ids": fixed},
        )
    if live.kind == "online_research" and len(others) + 2 > MAX_RESEARCH_CLASSROOMS:
        raise Conflict(f"Online research sessions hold at most {MAX_RESEARCH_CLASSROOMS} classrooms.")
    created = member is None
    if member is None:
        member = SessionClassroom(session_id=live.id, classroom_id=room.id, role="branch", stream_state="ok")
        member.classroom = room
    member.state = "planned"
    member.teacher_id = values["teacher_id"] if values["teacher_id"] is not None else member.teacher_id
    # Default: all the room's downlink that admission allows (its capacity less the headroom).
    member.downlink_bps = values["downlink_bps"] or live.branch_bps or int(room.downlink_capacity_bps * headroom)
    member.return_bps = values["return_bps"] if values["return_bps"] is not None else live.return_bps
    member.source_bps = 0
    member.receive_host = values["receive_host"] or room.receive_host
    member.receive_port = values["receive_port"] or room.receive_port
    member.left_at = None
    return member, created


def _plan_branch(
    session: Session, scope: Scope, live: LiveSession, classroom_id: Any, data: dict[str, Any],
    settings: RelaySettings, *, scheduling: bool = False,
) -> SessionClassroom:
    member, created = _branch_member(session, scope, live, classroom_id, data, settings.headroom,
                                     scheduling=scheduling)
    _admit(session, live, [member], settings,
           f"branch classroom {member.classroom_id} in session {live.id}", alone=True)
    if created:
        session.add(member)
    session.flush()
    session.refresh(live)
    return member


def _require_address(member: SessionClassroom) -> None:
    if member.receive_host is None or member.receive_port is None:
        raise InvalidInput(
            f"Classroom {member.classroom_id} has no receiving address: give receive_host and receive_port "
            "when joining (or register them on the classroom).",
            {"receive_host": ["Required."], "receive_port": ["Required."]},
        )


def _event_body(live: LiveSession, member: SessionClassroom) -> dict[str, Any]:
    return {
        "session_id": live.id,
        "session_kind": live.kind,
        "classroom_id": member.classroom_id,
        "school_id": member.classroom.school_id,
        "teacher_id": member.teacher_id,
        "role": member.role,
        "started_at": iso(member.joined_at),
        "ended_at": iso(member.left_at),
    }


def subject(live: LiveSession, member: SessionClassroom) -> str:
    return f"session/{live.id}/classroom/{member.classroom_id}"


def _require_free(session: Session, live: LiveSession, member: SessionClassroom) -> None:
    busy = _busy_elsewhere(session, member.classroom_id, live.id)
    if busy is not None:
        raise Conflict(f"Classroom {member.classroom_id} is live in session {busy} now.")


def _join(session: Session, live: LiveSession, member: SessionClassroom, now: datetime) -> None:
    member.state = "joined"
    member.joined_at = now
    member.left_at = None
    member.stream_state = "ok"


def current_occurrence(live: LiveSession, now: datetime) -> tuple[datetime, datetime] | None:
    """The occurrence that has not ended yet (the first one for a one-off lesson); None when over."""
    start, end = as_utc(live.starts_at), as_utc(live.ends_at)
    until = as_utc(live.recurrence_until)
    while end < now:
        if live.recurrence == "none":
            return None
        start, end = _next_occurrence(live.recurrence, start, end)
        if until is not None and start > until:
            return None
    return start, end


def _next_occurrence(recurrence: str, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    step = timedelta(days=7 if recurrence == "weekly" else 1)
    start, end = start + step, end + step
    while recurrence == "weekdays" and start.weekday() >= 5:
        start, end = start + timedelta(days=1), end + timedelta(days=1)
    return start, end


def start_session(
    session: Session, scope: Scope, session_id: Any, settings: RelaySettings, now: datetime | None = None,
    fleet: placement.Fleet | None = None,
) -> dict[str, Any]:
    """Admit every planned classroom and place the session on a data plane (`fleet`: one by default)."""
    now = now or utcnow()
    live = get_live_session(session, scope, session_id, lock=True)
    master = master_member(live)
    require_write_on(scope, master.classroom, "start this session")
    if live.status == "live":
        return dump_session(live)  # idempotent: a retried start changes nothing
    if live.status == "ended":
        raise Conflict(f"Session {live.id} has ended.")
    occurrence = current_occurrence(live, now)
    if occurrence is None:
        raise Conflict(f"Session {live.id}'s timetable is over (last lesson ended {iso(live.ends_at)}).")
    if now < occurrence[0] - EARLY_START:
        raise Conflict(
            f"Session {live.id}'s next lesson starts at {iso(occurrence[0])}; it may be opened from "
            f"{int(EARLY_START.total_seconds() // 60)} minutes before."
        )
    live.starts_at, live.ends_at = occurrence
    joining = [member for member in live.members if member.state == "planned"]
    for member in joining:
        _require_free(session, live, member)
        if member.role == "branch":
            _require_address(member)
    _admit(session, live, joining, settings, f"starting session {live.id}")
    live.dataplane = placement.choose_dataplane(
        session, live, master.classroom.school_id, fleet or placement.Fleet.single()
    )
    for member in joining:
        _join(session, live, member, now)
    live.status = "live"
    live.started_at = now
    outbox.add(session, "session.started", _event_body(live, master), subject=subject(live, master))
    for member in joining:
        if member.role == "branch":
            outbox.add(session, "classroom.joined", _event_body(live, member), subject=subject(live, member))
    session.flush()
    return dump_session(live)


def _leave(session: Session, live: LiveSession, member: SessionClassroom, now: datetime) -> None:
    was_joined = member.state == "joined"
    member.state = "left"
    member.left_at = now
    if was_joined and member.role == "branch":
        outbox.add(session, "classroom.left", _event_body(live, member), subject=subject(live, member))


def end_session(session: Session, scope: Scope, session_id: Any, now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    live = get_live_session(session, scope, session_id, lock=True)
    master = master_member(live)
    require_write_on(scope, master.classroom, "end this session")
    if live.status != "live":
        if live.status == "ended":
            return dump_session(live)  # idempotent
        raise Conflict(f"Session {live.id} is not live.")
    branches = [member for member in live.members if member.role == "branch"]
    for member in branches:
        _leave(session, live, member, now)
    master.state, master.left_at = "left", now
    outbox.add(session, "session.ended", _event_body(live, master), subject=subject(live, master))
    live.occurrences_held += 1
    live.started_at = None
    live.dataplane = None  # the next occurrence is placed again when it starts
    following = None
    if live.recurrence != "none":
        following = _next_occurrence(live.recurrence, as_utc(live.starts_at), as_utc(live.ends_at))
        until = as_utc(live.recurrence_until)
        if until is not None and following[0] > until:
            following = None
    if following is None:
        live.status = "ended"
    else:
        # A recurring lesson keeps its fixed classes: they are planned again for the next occurrence.
        live.status = "scheduled"
        live.starts_at, live.ends_at = following
        for member in [master, *branches]:
            if member.role == "master" or member.left_at == now:
                member.state, member.joined_at, member.left_at = "planned", None, None
    session.flush()
    return dump_session(live)


def join_branch(
    session: Session, scope: Scope, session_id: Any, classroom_id: Any, data: dict[str, Any] | None,
    settings: RelaySettings, now: datetime | None = None,
) -> dict[str, Any]:
    """Add a branch classroom: planned while the session is scheduled, admitted and live when it is live."""
    now = now or utcnow()
    live = get_live_session(session, scope, session_id, lock=True)
    if live.status == "ended":
        raise Conflict(f"Session {live.id} has ended.")
    if live.status == "scheduled":
        member = _plan_branch(session, scope, live, classroom_id, data or {}, settings)
        return dump_member(member)
    member, created = _branch_member(session, scope, live, classroom_id, data or {}, settings.headroom)
    if member.state == "joined":
        return dump_member(member)  # idempotent
    _require_address(member)
    _require_free(session, live, member)
    _admit(session, live, [member], settings, f"branch classroom {member.classroom_id} joining session {live.id}")
    if created:
        session.add(member)
    _join(session, live, member, now)
    session.flush()
    outbox.add(session, "classroom.joined", _event_body(live, member), subject=subject(live, member))
    return dump_member(member)


def leave_branch(
    session: Session, scope: Scope, session_id: Any, classroom_id: Any, now: datetime | None = None
) -> dict[str, Any]:
    now = now or utcnow()
    live = get_live_session(session, scope, session_id, lock=True)
    member = find_member(live, require_id(classroom_id, "Classroom"))
    if member is None or member.role != "branch":
        raise NotFound(f"Classroom {classroom_id} is not a branch of session {live.id}.")
    scope.require_write()
    if not (covers(scope, member.classroom) or covers(scope, master_member(live).classroom)):
        raise Forbidden(f"Classroom {classroom_id} is outside this token's scope ({scope.describe()}).")
    if member.state != "left":
        _leave(session, live, member, now)
    session.flush()
    return dump_member(member)
