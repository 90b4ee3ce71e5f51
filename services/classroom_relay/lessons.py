"""The lesson lifecycle: scheduling a live session, starting and ending it, branches joining and leaving.

Plain functions over a SQLAlchemy session; the caller owns the transaction. Every fact others react
to is added to the outbox in the same transaction. Bandwidth is committed only while a classroom is
`joined` to a live session; link_budgets.py checks it against every link the flows cross, and
placement.py picks the data plane a starting session runs on.

Longer than most files (~530 lines) on purpose: it is one state machine (session scheduled → live → ended,
member planned → joined → left), and splitting it would spread each transition's checks over two files.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.classroom_relay import link_budgets, placement, recordings, schemas, tracks
from services.classroom_relay.exceptions import (
    AdmissionRefused,
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
from services.classroom_relay.school_facts import Facts, require_teacher_of
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
    _check_receivers(live, [*live.members, *members], what)
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


def routing_members(members: list[SessionClassroom], states: tuple[str, ...]) -> list[tracks.Member]:
    unique = {member.classroom_id: member for member in members if member.state in states}
    return [tracks.Member(member.classroom_id, member.role, member.slot, tuple(member.tracks or []))
            for member in unique.values()]


def receive_budget_bps(live: LiveSession, member: SessionClassroom, members: list[tracks.Member]) -> int:
    """What the data plane may send `member`: a branch's downlink budget; the master gets everything
    its branches publish (admission has counted it on the master's downlink and its school's link)."""
    if member.role == "branch":
        return member.downlink_bps
    me = tracks.Member(member.classroom_id, member.role, member.slot, tuple(member.tracks or []))
    return tracks.total_bps(track for source in tracks.sources_of(live.kind, me, members) for track in source.tracks)


def _check_receivers(live: LiveSession, members: list[SessionClassroom], what: str) -> None:
    """Every receiving classroom's budget carries the audio plus the lowest video layer of each picture it
    must receive, and its ports fit below 65536; else refused with the numbers."""
    routing = routing_members([m for m in members if m.state != "left"], ("planned", "joined"))
    by_id = {member.classroom_id: member for member in members}
    for receiver in routing:
        member = by_id[receiver.classroom_id]
        received = [track for source in tracks.sources_of(live.kind, receiver, routing) for track in source.tracks]
        if member.receive_port is not None and received:
            top = tracks.highest_port(live.kind, receiver, routing, member.receive_port)
            if top > 65535:
                raise InvalidInput(
                    f"Classroom {member.classroom_id}'s receive port {member.receive_port} leaves no room for the "
                    f"{len(received)} tracks it receives (up to port {top}); register a lower base port.",
                    {"receive_port": ["Too high for the tracks received."]},
                )
        if member.role == "master" or not received:
            continue
        audio_bps, video_bps = tracks.least_bps(received)
        budget = member.downlink_bps
        if audio_bps + video_bps > budget:
            raise AdmissionRefused(
                f"Refused {what}: classroom {member.classroom_id}'s budget of {link_budgets.mbit(budget)} cannot "
                f"carry the audio ({link_budgets.mbit(audio_bps)}) plus the lowest video layer of each picture "
                f"it must receive ({link_budgets.mbit(video_bps)}): {link_budgets.mbit(audio_bps + video_bps)} "
                "is needed.",
                {"link": "classroom_downlink", "link_owner_id": member.classroom_id, "budget_bps": budget,
                 "audio_bps": audio_bps, "lowest_video_bps": video_bps, "required_bps": audio_bps + video_bps},
            )


def _published(
    given: list[dict[str, Any]] | None, room: Classroom, fallback: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The tracks a classroom publishes: as given, else as it registered them, else `fallback`."""
    try:
        return tracks.completed(given, room.tracks if room.tracks is not None else fallback)
    except ValueError as error:
        raise InvalidInput(f"Unplayable track: {error}.", {"tracks": [str(error)]}) from None


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
    session: Session, scope: Scope, data: dict[str, Any], settings: RelaySettings, facts: Facts
) -> dict[str, Any]:
    values = load(schemas.SessionIn(), data)
    master_room = get_room(session, scope, values["master_classroom_id"])
    require_write_on(scope, master_room, "schedule sessions in its classrooms")
    if values["teacher_id"] is not None:
        require_teacher_of(facts, scope, values["teacher_id"], {master_room.school_id}, "the master classroom's school")
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
        return_bps = 0 if values["kind"] == "master_teacher" and not values["interactive"] else DEFAULT_RETURN_BPS
    interactive = values["interactive"] if values["interactive"] is not None else return_bps > 0
    if interactive and not return_bps:
        return_bps = DEFAULT_RETURN_BPS
    master_tracks = _published(values["master_tracks"], master_room, tracks.default_tracks())
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
        source_bps=values["source_bps"] or tracks.total_bps(master_tracks) or DEFAULT_SOURCE_BPS,
        branch_bps=values["branch_bps"],
        return_bps=return_bps,
        interactive=interactive,
        occurrences_held=0,
        record=values["record"] if values["record"] is not None else schemas.default_record(values["kind"]),
        subject=values["subject"],
        grade=values["grade"],
    )
    session.add(live)
    session.flush()
    master = SessionClassroom(
        session_id=live.id, classroom_id=master_room.id, role="master", state="planned",
        teacher_id=live.teacher_id, source_bps=live.source_bps, downlink_bps=0, return_bps=0,
        receive_host=master_room.receive_host, receive_port=master_room.receive_port, stream_state="ok",
        slot=0, tracks=master_tracks, senders=[], media_seconds=0.0, media_bytes=0,
    )
    session.add(master)
    session.flush()
    session.refresh(live)
    _admit(session, live, [master], settings, f"session {live.id} (broadcast from classroom {master_room.id})",
           alone=True)
    for branch_id in branch_ids:
        _plan_branch(session, scope, live, branch_id, {}, settings, facts, scheduling=True)
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
    facts: Facts, *, scheduling: bool = False,
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
    if values["teacher_id"] is not None:
        require_teacher_of(facts, scope, values["teacher_id"], {room.school_id}, f"branch classroom {room.id}'s school")
    created = member is None
    if member is None:
        slot = max((m.slot for m in live.members), default=0) + 1
        member = SessionClassroom(session_id=live.id, classroom_id=room.id, role="branch", stream_state="ok",
                                  slot=slot, senders=[], media_seconds=0.0, media_bytes=0)
        member.classroom = room
    member.state = "planned"
    member.teacher_id = values["teacher_id"] if values["teacher_id"] is not None else member.teacher_id
    # Default: all the room's downlink that admission allows (its capacity less the headroom).
    member.downlink_bps = values["downlink_bps"] or live.branch_bps or int(room.downlink_capacity_bps * headroom)
    answering = live.interactive or live.kind == "online_research"
    camera_bps = values["return_bps"] or live.return_bps or schemas.DEFAULT_RETURN_BPS
    published = _published(values["tracks"], room, tracks.default_tracks(camera_bps)) if answering else []
    if values["return_bps"] == 0:
        published = []  # this branch only listens
    member.tracks = published
    member.return_bps = tracks.total_bps(published)
    member.source_bps = 0
    member.receive_host = values["receive_host"] or room.receive_host
    member.receive_port = values["receive_port"] or room.receive_port
    member.left_at = None
    return member, created


def _plan_branch(
    session: Session, scope: Scope, live: LiveSession, classroom_id: Any, data: dict[str, Any],
    settings: RelaySettings, facts: Facts, *, scheduling: bool = False,
) -> SessionClassroom:
    member, created = _branch_member(session, scope, live, classroom_id, data, settings.headroom, facts,
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
        # The timetable slot and the time the classroom really carried media: credit is capped by both.
        "scheduled_starts_at": iso(live.starts_at),
        "scheduled_ends_at": iso(live.ends_at),
        "media_seconds": round(member.media_seconds or 0.0, 3),
    }


def event_routing(live: LiveSession, member: SessionClassroom) -> dict[str, Any]:
    """An event's subject and bureau (the bureau of the classroom's school: its routing key)."""
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
    member.media_seconds, member.media_bytes, member.media_checked_at = 0.0, 0, None


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
    outbox.add(session, "session.started", _event_body(live, master), **event_routing(live, master))
    for member in joining:
        if member.role == "branch":
            outbox.add(session, "classroom.joined", _event_body(live, member), **event_routing(live, member))
    session.flush()
    return dump_session(live)


def _leave(session: Session, live: LiveSession, member: SessionClassroom, now: datetime) -> None:
    was_joined = member.state == "joined"
    member.state = "left"
    member.left_at = now
    if was_joined and member.role == "branch":
        outbox.add(session, "classroom.left", _event_body(live, member), **event_routing(live, member))


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
    outbox.add(session, "session.ended", _event_body(live, master), **event_routing(live, master))
    recordings.end_running(session, live, now)  # the recorder finalizes it at the next push
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
    settings: RelaySettings, facts: Facts, now: datetime | None = None,
) -> dict[str, Any]:
    """Add a branch classroom: planned while the session is scheduled, admitted and live when it is live."""
    now = now or utcnow()
    live = get_live_session(session, scope, session_id, lock=True)
    if live.status == "ended":
        raise Conflict(f"Session {live.id} has ended.")
    if live.status == "scheduled":
        member = _plan_branch(session, scope, live, classroom_id, data or {}, settings, facts)
        return dump_member(member)
    member, created = _branch_member(session, scope, live, classroom_id, data or {}, settings.headroom, facts)
    if member.state == "joined":
        return dump_member(member)  # idempotent
    _require_address(member)
    _require_free(session, live, member)
    _admit(session, live, [member], settings, f"branch classroom {member.classroom_id} joining session {live.id}")
    if created:
        session.add(member)
    _join(session, live, member, now)
    session.flush()
    outbox.add(session, "classroom.joined", _event_body(live, member), **event_routing(live, member))
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
