"""How the control plane finds rows, checks them against the caller's scope, and shows them.

Shared by classrooms.py, lessons.py and media_access.py; also the keys the data plane knows sessions and
classrooms by.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.classroom_relay.exceptions import (
    Forbidden,
    InvalidInput,
    NotFound,
)
from services.classroom_relay.models import (
    Classroom,
    LiveSession,
    Recording,
    SessionClassroom,
)
from services.common.scope import Scope
from services.common.timeutil import as_utc


def iso(moment: datetime | None) -> str | None:
    moment = as_utc(moment)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


# Keys the data plane knows sessions and classrooms by (join tokens carry them too).
def session_key(session_id: int) -> str:
    return f"session-{session_id}"


def classroom_key(classroom_id: int) -> str:
    return f"classroom-{classroom_id}"


def recorder_member_key(session_id: int) -> str:
    """The recorder's receive-only member of a session in the data plane (not a classroom)."""
    return f"recorder-{session_id}"


def recording_key(recording_id: int) -> str:
    """A recording's name on the recorder, in storage paths and in playback URLs (docs/recording.md)."""
    return f"rec-{recording_id}"


# --- output shapes -----------------------------------------------------------------------------------


def dump_tracks(classroom_id: int, published: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if published is None:
        return None
    return [{**track, "label": f"{classroom_key(classroom_id)}/{track['track']}"} for track in published]


def dump_classroom(room: Classroom) -> dict[str, Any]:
    return {
        "id": room.id,
        "bureau_id": room.school.bureau_id,
        "district_id": room.school.district_id,
        "school_id": room.school_id,
        "school_link_capacity_bps": room.school.link_capacity_bps,
        "name": room.name,
        "kind": room.kind,
        "uplink_capacity_bps": room.uplink_capacity_bps,
        "downlink_capacity_bps": room.downlink_capacity_bps,
        "receive_host": room.receive_host,
        "receive_port": room.receive_port,
        "tracks": dump_tracks(room.id, room.tracks),
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
        "tracks": dump_tracks(member.classroom_id, member.tracks or []),
        "media_seconds": round(member.media_seconds or 0.0, 3),
    }


def dump_recording(recording: Recording | None) -> dict[str, Any] | None:
    if recording is None:
        return None
    return {"id": recording.id, "key": recording_key(recording.id), "keep": recording.keep, "state": recording.state,
            "started_at": iso(recording.started_at), "duration_seconds": round(recording.duration_seconds or 0.0, 3)}


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
        "interactive": live.interactive,
        "started_at": iso(live.started_at),
        "occurrences_held": live.occurrences_held,
        "dataplane": live.dataplane,
        "record": live.record,
        "subject": live.subject,
        "grade": live.grade,
        "recording": dump_recording(live.running_recording) if live.status == "live" else None,
        "classrooms": [dump_member(member) for member in live.members],
    }


# --- lookups and permissions ---------------------------------------------------------------------------


def require_id(ident: Any, what: str) -> int:
    if not isinstance(ident, int) or isinstance(ident, bool) or ident < 1:
        raise InvalidInput(f"{what} id must be a positive integer.")
    return ident


def covers(scope: Scope, room: Classroom) -> bool:
    return scope.covers_school(room.school.bureau_id, room.school.district_id, room.school_id)


def get_room(session: Session, scope: Scope, classroom_id: Any) -> Classroom:
    room = session.get(Classroom, require_id(classroom_id, "Classroom"))
    if room is None or not covers_bureau_of(scope, room):
        raise NotFound(f"Classroom {classroom_id} does not exist.")
    return room


def covers_bureau_of(scope: Scope, room: Classroom) -> bool:
    return room.school.bureau_id == scope.bureau_id


def get_live_session(session: Session, scope: Scope, session_id: Any, *, lock: bool = False) -> LiveSession:
    query = select(LiveSession).where(LiveSession.id == require_id(session_id, "Session"))
    if lock:
        query = query.with_for_update()
    live = session.scalar(query)
    if live is None:
        raise NotFound(f"Session {session_id} does not exist.")
    rooms = [member.classroom for member in live.members]
    if not any(covers(scope, room) for room in rooms):
        raise NotFound(f"Session {session_id} does not exist.")  # do not reveal other schools' sessions
    return live


def master_member(live: LiveSession) -> SessionClassroom:
    return next(member for member in live.members if member.role == "master")


def find_member(live: LiveSession, classroom_id: int) -> SessionClassroom | None:
    return next((member for member in live.members if member.classroom_id == classroom_id), None)


def require_write_on(scope: Scope, room: Classroom, action: str) -> None:
    scope.require_write()
    if not covers(scope, room):
        raise Forbidden(
            f"Only a token covering school {room.school_id} may {action} (this token: {scope.describe()})."
        )
