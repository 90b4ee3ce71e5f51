"""Classrooms and sessions: scheduling, starting and ending, branches joining and leaving, join tokens,
the SDP of each receiving classroom, the data plane's desired state and stream health.

Plain functions over a SQLAlchemy session; the caller owns the transaction. Every fact others react
to is added to the outbox in the same transaction. Bandwidth is committed only while a classroom is
`joined` to a live session; admission checks it against every link the flows cross (link_budgets.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.classroom_relay import link_budgets, placement, schemas
from services.classroom_relay.dataplane.admission import issue_token, verify_token
from services.classroom_relay.exceptions import (
    Conflict,
    DataPlaneUnavailable,
    Forbidden,
    InvalidInput,
    NotFound,
)
from services.classroom_relay.models import (
    DEFAULT_DOWNLINK_BPS,
    DEFAULT_MASTER_SCHOOL_LINK_BPS,
    DEFAULT_RETURN_BPS,
    DEFAULT_SOURCE_BPS,
    DEFAULT_UPLINK_BPS,
    MBIT,
    Classroom,
    LiveSession,
    RelaySchool,
    SessionClassroom,
    outbox,
)
from services.classroom_relay.sdp import build_receiver_sdp
from services.common.db import flush_or_conflict
from services.common.scope import Scope
from services.common.timeutil import as_utc, utcnow
from services.common.validation import load

MAX_RESEARCH_CLASSROOMS = 8  # online research is "many ↔ many, small"
EARLY_START = timedelta(minutes=30)  # a lesson may be opened this long before its timetable slot
TOKEN_SLACK = timedelta(minutes=15)  # join tokens outlive the lesson's end by this much
MAX_TOKEN_TTL_SECONDS = 86_400
DEV_JOIN_SECRET = "dev-only-join-secret"  # only with RELAY_ALLOW_DEV_SECRET=1 (tests, `make run`)


@dataclass(frozen=True)
class RelaySettings:
    """Tunables from the environment (or nameko config): see `settings_from`."""

    join_secrets: list[str] = field(default_factory=lambda: [DEV_JOIN_SECRET])
    headroom: float = link_budgets.DEFAULT_HEADROOM
    branch_target_bps: int = 10 * MBIT
    loss_degraded_ratio: float = 0.05
    # A branch is "below target" when it gets less than this share of what it could get.
    rate_degraded_share: float = 0.5


def settings_from(config: dict[str, Any] | None = None) -> RelaySettings:
    """RELAY_JOIN_SECRETS (comma-separated, first signs), ADMISSION_HEADROOM, RELAY_BRANCH_TARGET_BPS,
    RELAY_LOSS_DEGRADED_RATIO — nameko config first, then the environment.

    Without RELAY_JOIN_SECRETS this raises ValueError (the service does not start): a well-known
    default secret would let anyone mint join tokens. RELAY_ALLOW_DEV_SECRET=1 allows the built-in
    development secret, for tests and a single development machine.
    """
    config = config or {}

    def value(name: str) -> Any:
        found = config.get(name)
        return found if found not in (None, "") else os.environ.get(name) or None

    secrets_text = value("RELAY_JOIN_SECRETS")
    defaults = RelaySettings()
    secrets = [part.strip() for part in str(secrets_text).split(",") if part.strip()] if secrets_text else None
    if not secrets and str(value("RELAY_ALLOW_DEV_SECRET") or "").lower() not in ("1", "true", "yes"):
        raise ValueError(
            "RELAY_JOIN_SECRETS is not set: give the relay's join-token secret(s) (comma-separated, the first "
            "signs), or set RELAY_ALLOW_DEV_SECRET=1 on a development machine."
        )
    headroom = float(value("ADMISSION_HEADROOM") or defaults.headroom)
    if not 0 < headroom <= 1:
        raise InvalidInput(f"ADMISSION_HEADROOM must be in (0, 1], not {headroom}.")
    return RelaySettings(
        join_secrets=secrets or defaults.join_secrets,
        headroom=headroom,
        branch_target_bps=int(value("RELAY_BRANCH_TARGET_BPS") or defaults.branch_target_bps),
        loss_degraded_ratio=float(value("RELAY_LOSS_DEGRADED_RATIO") or defaults.loss_degraded_ratio),
    )




def iso(moment: datetime | None) -> str | None:
    moment = as_utc(moment)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


# Keys the data plane knows sessions and classrooms by (join tokens carry them too).
def session_key(session_id: int) -> str:
    return f"session-{session_id}"


def classroom_key(classroom_id: int) -> str:
    return f"classroom-{classroom_id}"


# --- output shapes -----------------------------------------------------------------------------------


def dump_classroom(room: Classroom) -> dict[str, Any]:
    return {
        "id": room.id,
        "school_id": room.school_id,
        "school_link_capacity_bps": room.school.link_capacity_bps,
        "name": room.name,
        "kind": room.kind,
        "uplink_capacity_bps": room.uplink_capacity_bps,
        "downlink_capacity_bps": room.downlink_capacity_bps,
        "receive_host": room.receive_host,
        "receive_port": room.receive_port,
    }


def dump_member(member: SessionClassroom) -> dict[str, Any]:
    return {
        "classroom_id": member.classroom_id,
        "school_id": member.classroom.school_id,
        "role": member.role,
        "state": member.state,
        "teacher_id": member.teacher_id,
        "downlink_bps": member.downlink_bps,
        "return_bps": member.return_bps,
        "source_bps": member.source_bps,
        "receive_host": member.receive_host,
        "receive_port": member.receive_port,
        "joined_at": iso(member.joined_at),
        "left_at": iso(member.left_at),
        "stream_state": member.stream_state,
    }


def dump_session(live: LiveSession) -> dict[str, Any]:
    return {
        "id": live.id,
        "kind": live.kind,
        "title": live.title,
        "master_classroom_id": live.master_classroom_id,
        "teacher_id": live.teacher_id,
        "status": live.status,
        "starts_at": iso(live.starts_at),
        "ends_at": iso(live.ends_at),
        "recurrence": live.recurrence,
        "recurrence_until": iso(live.recurrence_until),
        "source_bps": live.source_bps,
        "branch_bps": live.branch_bps,
        "return_bps": live.return_bps,
        "started_at": iso(live.started_at),
        "occurrences_held": live.occurrences_held,
        "dataplane": live.dataplane,
        "classrooms": [dump_member(member) for member in live.members],
    }


# --- lookups and permissions ---------------------------------------------------------------------------


def _require_id(ident: Any, what: str) -> int:
    if not isinstance(ident, int) or isinstance(ident, bool) or ident < 1:
        raise InvalidInput(f"{what} id must be a positive integer.")
    return ident


def covers(scope: Scope, room: Classroom) -> bool:
    return scope.covers_school(room.school.bureau_id, room.school.district_id, room.school_id)


def get_room(session: Session, scope: Scope, classroom_id: Any) -> Classroom:
    room = session.get(Classroom, _require_id(classroom_id, "Classroom"))
    if room is None or not covers_bureau_of(scope, room):
        raise NotFound(f"Classroom {classroom_id} does not exist.")
    return room


def covers_bureau_of(scope: Scope, room: Classroom) -> bool:
    return room.school.bureau_id == scope.bureau_id


def get_live_session(session: Session, scope: Scope, session_id: Any, *, lock: bool = False) -> LiveSession:
    query = select(LiveSession).where(LiveSession.id == _require_id(session_id, "Session"))
    if lock:
        query = query.with_for_update()
    live = session.scalar(query)
    if live is None:
        raise NotFound(f"Session {session_id} does not exist.")
    rooms = [member.classroom for member in live.members]
    if not any(covers(scope, room) for room in rooms):
        raise NotFound(f"Session {session_id} does not exist.")  # do not reveal other schools' sessions
    return live


def _master_member(live: LiveSession) -> SessionClassroom:
    return next(member for member in live.members if member.role == "master")


def _member(live: LiveSession, classroom_id: int) -> SessionClassroom | None:
    return next((member for member in live.members if member.classroom_id == classroom_id), None)


def _require_write_on(scope: Scope, room: Classroom, action: str) -> None:
    scope.require_write()
    if not covers(scope, room):
        raise Forbidden(
            f"Only a token covering school {room.school_id} may {action} (this token: {scope.describe()})."
        )


# --- classrooms ------------------------------------------------------------------------------------------


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
    school = session.get(RelaySchool, _require_id(school_id, "School"), with_for_update=True)
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
        query = query.where(Classroom.school_id == _require_id(school_id, "School"))
    rooms = session.scalars(query.order_by(Classroom.id)).all()
    return [dump_classroom(room) for room in rooms if covers(scope, room)]


# --- link budget helpers ----------------------------------------------------------------------------------


def _room(room: Classroom) -> link_budgets.Room:
    return link_budgets.Room(room.id, room.school_id, room.uplink_capacity_bps, room.downlink_capacity_bps)


def _member_loads(live: LiveSession, member: SessionClassroom) -> list[link_budgets.Load]:
    master = _room(_master_member(live).classroom)
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
    _require_write_on(scope, master_room, "schedule sessions in its classrooms")
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
    master_room = _master_member(live).classroom
    scope.require_write()
    if not (covers(scope, room) or covers(scope, master_room)):
        raise Forbidden(f"Classroom {room.id} is outside this token's scope ({scope.describe()}).")
    if room.id == master_room.id:
        raise InvalidInput(f"Classroom {room.id} is the master classroom of session {live.id}.")
    member = _member(live, room.id)
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


def _routing(live: LiveSession, member: SessionClassroom) -> dict[str, Any]:
    """An event's subject and bureau (the bureau of the classroom's school)."""
    return {"subject": f"session/{live.id}/classroom/{member.classroom_id}",
            "bureau_id": member.classroom.school.bureau_id}


def _require_free(session: Session, live: LiveSession, member: SessionClassroom) -> None:
    busy = _busy_elsewhere(session, member.classroom_id, live.id)
    if busy is not None:
        raise Conflict(f"Classroom {member.classroom_id} is live in session {busy} now.")


def _join(session: Session, live: LiveSession, member: SessionClassroom, now: datetime) -> None:
    member.state = "joined"
    member.joined_at = now
    member.left_at = None
    member.stream_state = "ok"


def _current_occurrence(live: LiveSession, now: datetime) -> tuple[datetime, datetime] | None:
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
    master = _master_member(live)
    _require_write_on(scope, master.classroom, "start this session")
    if live.status == "live":
        return dump_session(live)  # idempotent: a retried start changes nothing
    if live.status == "ended":
        raise Conflict(f"Session {live.id} has ended.")
    occurrence = _current_occurrence(live, now)
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
    outbox.add(session, "session.started", _event_body(live, master), **_routing(live, master))
    for member in joining:
        if member.role == "branch":
            outbox.add(session, "classroom.joined", _event_body(live, member), **_routing(live, member))
    session.flush()
    return dump_session(live)


def _leave(session: Session, live: LiveSession, member: SessionClassroom, now: datetime) -> None:
    was_joined = member.state == "joined"
    member.state = "left"
    member.left_at = now
    if was_joined and member.role == "branch":
        outbox.add(session, "classroom.left", _event_body(live, member), **_routing(live, member))


def end_session(session: Session, scope: Scope, session_id: Any, now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    live = get_live_session(session, scope, session_id, lock=True)
    master = _master_member(live)
    _require_write_on(scope, master.classroom, "end this session")
    if live.status != "live":
        if live.status == "ended":
            return dump_session(live)  # idempotent
        raise Conflict(f"Session {live.id} is not live.")
    branches = [member for member in live.members if member.role == "branch"]
    for member in branches:
        _leave(session, live, member, now)
    master.state, master.left_at = "left", now
    outbox.add(session, "session.ended", _event_body(live, master), **_routing(live, master))
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
    outbox.add(session, "classroom.joined", _event_body(live, member), **_routing(live, member))
    return dump_member(member)


def leave_branch(
    session: Session, scope: Scope, session_id: Any, classroom_id: Any, now: datetime | None = None
) -> dict[str, Any]:
    now = now or utcnow()
    live = get_live_session(session, scope, session_id, lock=True)
    member = _member(live, _require_id(classroom_id, "Classroom"))
    if member is None or member.role != "branch":
        raise NotFound(f"Classroom {classroom_id} is not a branch of session {live.id}.")
    scope.require_write()
    if not (covers(scope, member.classroom) or covers(scope, _master_member(live).classroom)):
        raise Forbidden(f"Classroom {classroom_id} is outside this token's scope ({scope.describe()}).")
    if member.state != "left":
        _leave(session, live, member, now)
    session.flush()
    return dump_member(member)


# --- join tokens, senders and SDP ----------------------------------------------------------------------------


def issue_join_token(
    session: Session, scope: Scope, session_id: Any, classroom_id: Any, data: dict[str, Any] | None,
    settings: RelaySettings, now: datetime | None = None, media_addresses: Mapping[str, list] | None = None,
) -> dict[str, Any]:
    """A signed token for one classroom of one session; its encoder sends `hello` from its RTP port.

    `media_addresses` (data plane name → [host, port]) gives the address of the data plane the session
    is placed on; a session that is not live yet has none (fetch the token again once it started).
    """
    values = load(schemas.TokenIn(), data or {})
    now = now or utcnow()
    live = get_live_session(session, scope, session_id)
    member = _member(live, _require_id(classroom_id, "Classroom"))
    if member is None or member.state == "left":
        raise NotFound(f"Classroom {classroom_id} is not in session {live.id}.")
    scope.require_write()
    if not covers(scope, member.classroom):
        raise Forbidden(f"Only classroom {member.classroom_id}'s school may fetch its join token.")
    if live.status == "ended":
        raise Conflict(f"Session {live.id} has ended.")
    occurrence = _current_occurrence(live, now)
    if occurrence is None:
        raise Conflict(f"Session {live.id}'s timetable is over.")
    ttl = values["ttl_seconds"]
    if ttl is None:
        ttl = int((occurrence[1] + TOKEN_SLACK - now).total_seconds())
    ttl = max(10, min(ttl, MAX_TOKEN_TTL_SECONDS))
    issued = now.timestamp()
    token = issue_token(
        settings.join_secrets[0].encode(), session_key(live.id), classroom_key(member.classroom_id), ttl, now=issued
    )
    return {
        "token": token,
        "session": session_key(live.id),
        "classroom": classroom_key(member.classroom_id),
        "expires_at": iso(datetime.fromtimestamp(int(issued + ttl), UTC)),
        "hello": f"LXHELLO1 {token}",
        "dataplane": live.dataplane,
        "media_address": (media_addresses or {}).get(live.dataplane) if live.dataplane else None,
    }


def check_join_token(
    settings: RelaySettings, token: str, session_id: int, classroom_id: int, now: float | None = None
) -> bool:
    """Whether `token` is valid now for exactly this session and classroom (the data plane's own rule)."""
    if not isinstance(token, str):
        return False
    _reason, claims = verify_token([secret.encode() for secret in settings.join_secrets], token, now)
    return claims is not None and (claims.session, claims.classroom) == (
        session_key(session_id), classroom_key(classroom_id)
    )


def register_sender(
    session: Session, scope: Scope, session_id: Any, classroom_id: Any, data: dict[str, Any],
    settings: RelaySettings, now: datetime | None = None,
) -> dict[str, Any]:
    """Pin an encoder's source address for a classroom, for encoders that cannot send a hello first."""
    values = load(schemas.SenderIn(), data)
    issued = issue_join_token(session, scope, session_id, classroom_id, {}, settings, now)
    live = get_live_session(session, scope, session_id)
    member = _member(live, classroom_id)
    assert member is not None  # issue_join_token checked it
    member.sender_host, member.sender_port, member.sender_token = values["host"], values["port"], issued["token"]
    session.flush()
    return {"classroom_id": member.classroom_id, "address": [values["host"], values["port"]],
            "expires_at": issued["expires_at"]}


def branch_sdp(
    session: Session, scope: Scope, session_id: Any, classroom_id: Any,
    outputs_by_dataplane: Mapping[str, Mapping[tuple[str, str], dict]],
) -> str:
    """The SDP a receiving classroom plays; `outputs_by_dataplane` is each data plane's view of its outputs
    by (session, classroom) key (see `outputs_by_key`); only the session's own data plane counts."""
    live = get_live_session(session, scope, session_id)
    member = _member(live, _require_id(classroom_id, "Classroom"))
    if member is None or member.role != "branch" or member.state == "left":
        raise NotFound(f"Classroom {classroom_id} is not a branch of session {live.id}.")
    if not covers(scope, member.classroom):
        raise Forbidden(f"Only classroom {member.classroom_id}'s school may fetch its SDP.")
    if live.status != "live":
        raise Conflict(f"Session {live.id} is not live; its SDP exists while it is.")
    outputs = outputs_by_dataplane.get(live.dataplane or "", {})
    output = outputs.get((session_key(live.id), classroom_key(member.classroom_id)))
    if output is None:
        raise DataPlaneUnavailable(
            f"The relay has not confirmed classroom {member.classroom_id}'s stream yet; try again in a moment."
        )
    relay_host, relay_port = output["relay_address"]
    return build_receiver_sdp(
        relay_host=relay_host,
        receive_port=member.receive_port,
        relay_rtcp_port=relay_port,
        session_name=f"{live.title} (session {live.id})",
        ssrc=output.get("ssrc"),
    )


# --- the data plane's desired state ----------------------------------------------------------------------------


def desired_state(session: Session, settings: RelaySettings, dataplane: str | None = None) -> dict[str, Any]:
    """Everything a data plane should forward now, for one idempotent `set_state`: the live sessions
    placed on `dataplane` (None: all live sessions)."""
    entries = []
    query = select(LiveSession).where(LiveSession.status == "live").order_by(LiveSession.id)
    if dataplane is not None:
        query = query.where(LiveSession.dataplane == dataplane)
    for live in session.scalars(query):
        master = _master_member(live)
        return_address = (
            [master.receive_host, master.receive_port] if master.receive_host and master.receive_port else None
        )
        branches, senders = [], []
        for member in live.members:
            if member.state != "joined":
                continue
            if member.sender_host and member.sender_token:
                senders.append({"classroom": classroom_key(member.classroom_id), "token": member.sender_token,
                                "address": [member.sender_host, member.sender_port]})
            if member.role != "branch":
                continue
            branch: dict[str, Any] = {
                "classroom": classroom_key(member.classroom_id),
                "address": [member.receive_host, member.receive_port],
                "budget_bytes_per_second": member.downlink_bps / 8,
            }
            if member.return_bps and return_address:
                branch["uplink_budget_bytes_per_second"] = member.return_bps / 8
                branch["return_address"] = return_address
            branches.append(branch)
        entries.append({"session": session_key(live.id), "master": classroom_key(master.classroom_id),
                        "branches": branches, "senders": senders})
    return {"secrets": settings.join_secrets, "sessions": entries}


# --- stream health -------------------------------------------------------------------------------------------


def stream_problems(output: dict[str, Any], source: dict[str, Any] | None, settings: RelaySettings) -> list[str]:
    """Why a branch's stream is degraded (empty: it is fine). Compares what it gets with what it could get."""
    problems = []
    if output.get("loss_ratio", 0.0) >= settings.loss_degraded_ratio:
        problems.append("loss")
    budget_bps = output.get("budget_bytes_per_second", 0) * 8
    if budget_bps < settings.branch_target_bps:
        problems.append("budget_below_target")
    if source and source.get("live"):
        # The best the branch could get: the highest layer that fits both its budget and the target.
        cap = min(budget_bps, settings.branch_target_bps)
        rates = sorted(layer["rate_bytes_per_second"] * 8 for layer in source.get("layers", []))
        fitting = [rate for rate in rates if rate <= cap]
        expected = fitting[-1] if fitting else (rates[0] if rates else 0.0)
        sent_bps = output.get("send_rate_bytes_per_second", 0) * 8
        if expected > 0 and sent_bps < settings.rate_degraded_share * expected:
            problems.append("below_target")
    return problems


def record_stream_health(
    session: Session, stats: dict[str, Any], settings: RelaySettings, now: datetime | None = None
) -> list[str]:
    """Compare the data plane's stats with each joined branch; publish degraded/recovered on changes.

    Returns the routing keys added (for logging and tests). Only changes are published, and the state
    lives in the database, so several service instances or a restart do not repeat events.
    """
    now = now or utcnow()
    added = []
    by_key = {key: value for key, value in (stats.get("sessions") or {}).items()}
    query = select(SessionClassroom).join(LiveSession).where(
        LiveSession.status == "live", SessionClassroom.state == "joined", SessionClassroom.role == "branch"
    )
    for member in session.scalars(query):
        live = member.session
        found = by_key.get(session_key(live.id))
        if found is None:
            continue  # not pushed yet: nothing measured
        output = next(
            (item for item in found.get("outputs", [])
             if item.get("classroom") == classroom_key(member.classroom_id)
             and item.get("source_classroom") == classroom_key(live.master_classroom_id)),
            None,
        )
        if output is None:
            continue
        source = (found.get("tracks") or {}).get(classroom_key(live.master_classroom_id))
        problems = stream_problems(output, source, settings)
        state = "degraded" if problems else "ok"
        if state == member.stream_state:
            continue
        member.stream_state = state
        routing_key = "stream.degraded" if problems else "stream.recovered"
        outbox.add(session, routing_key, {
            "session_id": live.id,
            "classroom_id": member.classroom_id,
            "school_id": member.classroom.school_id,
            "reasons": problems,
            "target_bps": settings.branch_target_bps,
            "budget_bps": int(output.get("budget_bytes_per_second", 0) * 8),
            "send_rate_bps": int(output.get("send_rate_bytes_per_second", 0) * 8),
            "loss_ratio": output.get("loss_ratio", 0.0),
            "at": iso(now),
        }, **_routing(live, member))
        added.append(routing_key)
    session.flush()
    return added


def live_session_labels(session: Session) -> list[dict[str, str]]:
    """Who is master of each live session, where, and for which school: the labels of the
    `lianxiao_relay_session_info` gauge, in the data plane's own keys so rules can join on them."""
    query = select(LiveSession).where(LiveSession.status == "live").order_by(LiveSession.id)
    labels = []
    for live in session.scalars(query):
        master = _master_member(live)
        labels.append({
            "session": session_key(live.id),
            "dataplane": live.dataplane or "",
            "master_classroom": classroom_key(master.classroom_id),
            "master_school": str(master.classroom.school_id),
        })
    return labels


def outputs_by_key(stats: dict[str, Any] | None) -> dict[tuple[str, str], dict]:
    """The data plane's downstream outputs by (session key, branch classroom key)."""
    found: dict[tuple[str, str], dict] = {}
    for key, entry in ((stats or {}).get("sessions") or {}).items():
        master = entry.get("master")
        for output in entry.get("outputs", []):
            if output.get("source_classroom") == master:
                found[(key, output["classroom"])] = output
    return found
