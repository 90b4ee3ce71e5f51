"""Events in: the relay's recording lifecycle and accounts' schools and alliances.

- `recording.started` → a live recording (the patrol list); `recording.ended` → it stops being live.
- `recording.available` → a resource (its files are complete), and `resource.published` on the outbox.
- `school.created`, `alliance.created`, `school.joined_alliance` → the roster copy access.py needs.

Every handler is idempotent on its own (upserts keyed by the relay's recording id, accounts' ids) as well
as deduplicated by event id (services/common/subscriber.py). The bureau comes from the routing key
(`bureau.<id>.…`, set by the publisher's outbox) unless the body names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.events import BUREAU_KEY_PREFIX
from services.common.subscriber import ReceivedEvent
from services.common.timeutil import utcnow
from services.common.validation import load
from services.resources import publishing, schemas
from services.resources.exceptions import InvalidInput
from services.resources.models import AllianceMember, LiveRecording, Resource, School

RELAY_EVENTS = ["recording.started", "recording.ended", "recording.available"]
ACCOUNTS_EVENTS = ["school.created", "alliance.created", "school.joined_alliance"]
BUREAU_TIMEZONE = ZoneInfo("Asia/Shanghai")  # the lesson's date is the bureau's calendar day
STARTED = schemas.RecordingStarted()
AVAILABLE = schemas.RecordingAvailable()


def bureau_of(event: ReceivedEvent) -> int:
    """The event's bureau: the body's `bureau_id`, else the routing key's `bureau.<id>.` prefix."""
    if isinstance(event.body.get("bureau_id"), int):
        return int(event.body["bureau_id"])
    routing_key = str(((event.message and event.message.delivery_info) or {}).get("routing_key", ""))
    prefix, _, rest = routing_key.partition(".")
    bureau = rest.partition(".")[0]
    if prefix != BUREAU_KEY_PREFIX or not bureau.isdigit():
        raise InvalidInput(f"Cannot tell the bureau of event {event.id} (routing key {routing_key!r}).")
    return int(bureau)


def local_date(moment: datetime) -> date:
    return moment.astimezone(BUREAU_TIMEZONE).date()


def district_of(session: Session, school_id: int, given: int | None) -> int | None:
    """The body's district, else accounts' (`school.created`), else the one an earlier recording named."""
    if given is not None:
        return given
    school = session.get(School, school_id)
    if school is not None:
        return school.district_id
    return session.scalar(select(Resource.district_id).where(Resource.school_id == school_id,
                                                             Resource.district_id.is_not(None))
                          .order_by(Resource.id.desc()).limit(1))


def apply_relay_event(session: Session, event_type: str, body: Mapping[str, Any], bureau_id: int) -> None:
    if event_type == "recording.available":
        recording_available(session, body, bureau_id)
    elif event_type in ("recording.started", "recording.ended"):
        recording_live(session, event_type, body, bureau_id)


def recording_live(session: Session, event_type: str, body: Mapping[str, Any], bureau_id: int) -> None:
    values = load(STARTED, dict(body))
    district_id = district_of(session, values["school_id"], values["district_id"])
    row = session.get(LiveRecording, values["recording_id"])
    if row is not None and (row.state == "available" or (row.state == "ended" and event_type == "recording.started")):
        return  # events of one recording may arrive out of order: never bring a finished one back to life
    if row is None:
        row = LiveRecording(recording_id=values["recording_id"], state="recording")
    row.recording_key = values["key"]
    row.bureau_id = bureau_id
    row.school_id = values["school_id"]
    row.district_id = district_id
    for name in ("classroom_id", "teacher_id", "session_id", "session_kind", "title", "subject", "grade",
                 "keep", "started_at"):
        setattr(row, name, values[name])
    if event_type == "recording.ended":
        row.state = "ended"
        row.ended_at = values["ended_at"] or utcnow()
    session.add(row)


def default_title(values: Mapping[str, Any]) -> str:
    if values.get("title"):
        return str(values["title"])[:200]
    label = " ".join(str(values[name]) for name in ("grade", "subject") if values.get(name))
    return f"{label or '课堂实录'} {local_date(values['started_at']).isoformat()}"[:200]


def recording_available(session: Session, body: Mapping[str, Any], bureau_id: int) -> Resource:
    """The resource of a finished recording (the one already made, when the event comes again)."""
    values = load(AVAILABLE, dict(body))
    if values["ended_at"] < values["started_at"]:
        raise InvalidInput(f"Recording {values['recording_id']} ends before it starts.")
    existing = session.scalar(select(Resource).where(
        (Resource.recording_id == values["recording_id"]) | (Resource.recording_key == values["key"])))
    if existing is not None:
        return existing
    now = utcnow()
    resource = Resource(
        recording_id=values["recording_id"], recording_key=values["key"], bureau_id=bureau_id,
        district_id=district_of(session, values["school_id"], values["district_id"]),
        school_id=values["school_id"], classroom_id=values["classroom_id"], teacher_id=values["teacher_id"],
        session_id=values["session_id"], session_kind=values["session_kind"], title=default_title(values),
        subject=values["subject"] or None, grade=values["grade"] or None, date=local_date(values["started_at"]),
        started_at=values["started_at"], ended_at=values["ended_at"], duration_seconds=values["duration_seconds"],
        tracks=[dict(track) for track in values["tracks"]], gaps=[dict(gap) for gap in values["gaps"]],
        files={key: value for key, value in dict(values["files"]).items() if value is not None},
        bytes=values["bytes"], shared=False, kept=False, created_at=now, updated_at=now,
    )
    session.add(resource)
    session.flush()
    live = session.get(LiveRecording, values["recording_id"])
    if live is not None:
        live.state = "available"
        live.ended_at = live.ended_at or values["ended_at"]
    publishing.published(session, resource)
    return resource


# --- accounts' roster ----------------------------------------------------------------------------------

def _int(body: Mapping[str, Any], name: str, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"`{name}` must be an integer (got {value!r}).")
    return value


def apply_accounts_event(session: Session, event_type: str, body: Mapping[str, Any], bureau_id: int) -> None:
    if event_type == "school.created":
        school_id = _int(body, "id")
        row = session.get(School, school_id) or School(id=school_id)
        row.bureau_id = _int(body, "bureau_id", required=False) or bureau_id
        row.district_id = _int(body, "district_id", required=False)
        session.merge(row)
    elif event_type == "alliance.created":
        alliance_id = _int(body, "id")
        members = body.get("member_school_ids") or []
        if not isinstance(members, list):
            raise InvalidInput("`member_school_ids` must be a list.")
        lead = body.get("lead_school_id")
        for school_id in {*(m for m in members if isinstance(m, int)), *([lead] if isinstance(lead, int) else [])}:
            _member(session, alliance_id, school_id, _int(body, "bureau_id", required=False) or bureau_id)
    elif event_type == "school.joined_alliance":
        _member(session, _int(body, "alliance_id"), _int(body, "school_id"), bureau_id)  # type: ignore[arg-type]


def _member(session: Session, alliance_id: int | None, school_id: int, bureau_id: int) -> None:
    if session.get(AllianceMember, (alliance_id, school_id)) is None:
        session.add(AllianceMember(alliance_id=alliance_id, school_id=school_id, bureau_id=bureau_id))
        session.flush()


def apply_events(session: Session, source: str, events: list[ReceivedEvent]) -> None:
    """A batch of one source's events, in order (each already deduplicated by the subscriber)."""
    for event in events:
        bureau_id = bureau_of(event)
        if source == "classroom_relay":
            apply_relay_event(session, event.routing_key, event.body, bureau_id)
        else:
            apply_accounts_event(session, event.routing_key, event.body, bureau_id)
