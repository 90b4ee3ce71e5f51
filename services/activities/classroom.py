"""Classroom sessions become activities: what activities consumes from the classroom relay.

Consumed from exchange `classroom_relay.events`, routing keys `session.ended` and `classroom.left`,
body {session_id, classroom_id, school_id, teacher_id?, started_at, ended_at, role: "master"|"branch"}
(extra fields are ignored, so the relay may add some). The teacher of a master classroom is credited
`classroom_session_taught`, the teacher of a branch classroom `classroom_session_attended`, online
hours = the time the classroom was in the session, capped by the timetable slot
(`scheduled_starts_at`..`scheduled_ends_at`) and by the time it really carried media (`media_seconds`,
measured by the relay's data plane). A message without teacher_id, or whose capped time is nothing,
credits nobody.

One teacher is credited once per session and classroom: the statement id is derived from
(session, classroom, teacher), so `classroom.left` and a later `session.ended` for the same teacher,
or a re-published event, find the first record and change nothing.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from marshmallow import EXCLUDE, Schema, fields, validate
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.activities import log
from services.activities.exceptions import InvalidInput
from services.activities.models import Activity
from services.common.validation import load

CLASSROOM_ROUTING_KEYS = ("session.ended", "classroom.left")
SESSION_NAMESPACE = uuid.UUID("6f1b8a52-3c5e-4f7e-9d0a-1c2b3d4e5f60")


class SessionEventIn(Schema):
    class Meta:
        unknown = EXCLUDE  # tolerate fields the relay adds later

    session_id = fields.Raw(required=True)
    classroom_id = fields.Integer(required=True, strict=True)
    school_id = fields.Integer(required=True, strict=True)
    teacher_id = fields.Integer(load_default=None, allow_none=True, strict=True)
    started_at = fields.AwareDateTime(required=True)
    ended_at = fields.AwareDateTime(required=True)
    role = fields.String(required=True, validate=validate.OneOf(("master", "branch")))
    scheduled_starts_at = fields.AwareDateTime(load_default=None, allow_none=True)
    scheduled_ends_at = fields.AwareDateTime(load_default=None, allow_none=True)
    media_seconds = fields.Float(load_default=None, allow_none=True, validate=validate.Range(min=0))


def credited_interval(values: dict[str, Any]) -> tuple[datetime, datetime] | None:
    """The time to credit: in the session, within the timetable slot, no longer than media was carried."""
    start, end = values["started_at"], values["ended_at"]
    if values["scheduled_starts_at"] is not None:
        start = max(start, values["scheduled_starts_at"])
    if values["scheduled_ends_at"] is not None:
        end = min(end, values["scheduled_ends_at"])
    if values["media_seconds"] is not None:
        end = min(end, start + timedelta(seconds=values["media_seconds"]))
    return (start, end) if end - start >= timedelta(seconds=30) else None


def record_session_event(session: Session, routing_key: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """Credit the teacher of one classroom session event; None when it names no teacher."""
    values = load(SessionEventIn(), body)
    if values["teacher_id"] is None:
        return None
    if values["ended_at"] <= values["started_at"]:
        raise InvalidInput("ended_at: a session ends after it starts.", {"ended_at": ["Before started_at."]})
    interval = credited_interval(values)
    if interval is None:
        return None
    started_at, ended_at = (moment.isoformat() for moment in interval)
    statement_id = str(uuid.uuid5(SESSION_NAMESPACE,
                                  f"{values['session_id']}/{values['classroom_id']}/{values['teacher_id']}"))
    existing = session.scalar(select(Activity).where(Activity.id == statement_id))
    if existing is not None:
        return {"status": "duplicate", "activity": log.activity_out(existing)}
    kind = "classroom_session_taught" if values["role"] == "master" else "classroom_session_attended"
    prepared = log.prepare(session, None, {
        "id": statement_id,
        "kind": kind,
        "teacher_id": values["teacher_id"],
        "occurred_at": started_at,
        "details": {
            "session_id": str(values["session_id"]),
            "classroom_id": values["classroom_id"],
            "role": values["role"],
            "started_at": started_at,
            "ended_at": ended_at,
        },
    }, from_client=False)
    return log.record_prepared(session, prepared, f"classroom_relay/{routing_key}")
