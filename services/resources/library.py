"""The library: search, one resource, its metadata and its knowledge-point clips (access.py says who)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from services.common.scope import Scope
from services.common.timeutil import as_utc, utcnow
from services.common.validation import load
from services.resources import access, publishing, schemas
from services.resources.exceptions import Conflict, InvalidInput, NotFound
from services.resources.models import Clip, Resource

QUERY = schemas.ResourceQuery()
PATCH = schemas.ResourcePatch()
CLIP = schemas.ClipIn()


def iso(moment: Any) -> str | None:
    return as_utc(moment).isoformat() if moment is not None else None


def resource_out(resource: Resource, clips: list[Clip] | None = None) -> dict[str, Any]:
    data = {
        "id": resource.id, "title": resource.title, "recording_key": resource.recording_key,
        "session_id": resource.session_id, "session_kind": resource.session_kind, "school_id": resource.school_id,
        "classroom_id": resource.classroom_id, "teacher_id": resource.teacher_id, "subject": resource.subject,
        "grade": resource.grade, "date": resource.date.isoformat(), "started_at": iso(resource.started_at),
        "duration_seconds": resource.duration_seconds, "tracks": resource.tracks, "gaps": resource.gaps,
        "shared": resource.shared, "kept": resource.kept,
    }
    if clips is not None:
        data["clips"] = [clip_out(clip) for clip in clips]
    return data


def clip_out(clip: Clip) -> dict[str, Any]:
    return {"id": clip.id, "title": clip.title, "start_seconds": clip.start_seconds,
            "end_seconds": clip.end_seconds, "created_at": iso(clip.created_at)}


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search(session: Session, scope: Scope, params: dict[str, Any]) -> dict[str, Any]:
    """`{"items", "total"}`: resources visible to the token, newest first, filtered by `params`."""
    values = load(QUERY, params)
    conditions = [access.visible_condition(session, scope)]
    for name in ("school_id", "teacher_id", "subject", "grade", "shared"):
        if values.get(name) is not None:
            conditions.append(getattr(Resource, name) == values[name])
    if values.get("from_"):
        conditions.append(Resource.date >= values["from_"])
    if values.get("to"):
        conditions.append(Resource.date <= values["to"])
    if values.get("q"):
        pattern = _like(values["q"].lower())
        conditions.append(or_(func.lower(Resource.title).like(pattern, escape="\\"),
                              func.lower(func.coalesce(Resource.subject, "")).like(pattern, escape="\\")))
    total = session.scalar(select(func.count()).select_from(Resource).where(*conditions)) or 0
    rows = session.scalars(select(Resource).where(*conditions).order_by(Resource.started_at.desc(), Resource.id.desc())
                           .limit(values["limit"]).offset(values["offset"])).all()
    return {"items": [resource_out(row) for row in rows], "total": int(total)}


def live_clips(session: Session, resource_id: int) -> list[Clip]:
    return list(session.scalars(select(Clip).where(Clip.resource_id == resource_id, Clip.deleted_at.is_(None))
                                .order_by(Clip.start_seconds, Clip.id)))


def get_resource(session: Session, scope: Scope, resource_id: int) -> dict[str, Any]:
    resource = access.visible_resource(session, scope, resource_id)
    return resource_out(resource, live_clips(session, resource.id))


def update_resource(session: Session, scope: Scope, resource_id: int, data: Any) -> dict[str, Any]:
    """Title, subject, grade, shared, kept; becoming shared publishes `resource.published` again."""
    values = load(PATCH, data)
    resource = access.changeable_resource(session, scope, resource_id)
    newly_shared = values.get("shared") is True and not resource.shared
    for name, value in values.items():
        setattr(resource, name, value)
    resource.updated_at = utcnow()
    session.flush()
    if newly_shared:
        publishing.published(session, resource)
    return resource_out(resource, live_clips(session, resource.id))


def add_clip(session: Session, scope: Scope, resource_id: int, data: Any) -> dict[str, Any]:
    values = load(CLIP, data)
    resource = access.changeable_resource(session, scope, resource_id)
    if values["end_seconds"] > resource.duration_seconds + 1e-6:
        raise InvalidInput(
            f"The clip ends at {values['end_seconds']:g} s, after the recording's end "
            f"({resource.duration_seconds:g} s).",
            {"end_seconds": [f"At most {resource.duration_seconds:g}."]})
    # The resource's row is the clips' lock: concurrent adds near the limit count one after another (measured
    # without it: 201 clips from 60 requests at once, tests/gateway/test_resources_hostile.py).
    session.execute(select(Resource.id).where(Resource.id == resource.id).with_for_update())
    count = session.scalar(select(func.count()).select_from(Clip).where(
        Clip.resource_id == resource.id, Clip.deleted_at.is_(None))) or 0
    if count >= schemas.MAX_CLIPS:
        raise Conflict(f"Resource {resource_id} already has {count} clips (at most {schemas.MAX_CLIPS}).")
    clip = Clip(resource_id=resource.id, title=values["title"], start_seconds=values["start_seconds"],
                end_seconds=values["end_seconds"], created_at=utcnow())
    session.add(clip)
    session.flush()
    return clip_out(clip)


def delete_clip(session: Session, scope: Scope, resource_id: int, clip_id: int) -> None:
    resource = access.changeable_resource(session, scope, resource_id)
    clip = session.scalar(select(Clip).where(Clip.id == int(clip_id), Clip.resource_id == resource.id,
                                             Clip.deleted_at.is_(None)))
    if clip is None:
        raise NotFound(f"Resource {resource_id} has no clip {clip_id}.")
    clip.deleted_at = utcnow()
