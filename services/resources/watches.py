"""Watches: who watched which live lesson or recording, for how long, and what it counted as.

- A watch starts on a target the token may see (a live session on its patrol list, or a resource), gets
  heartbeats and ends — explicitly, or by silence: no heartbeat for two intervals ends it at its last one.
- Heartbeats are bounded: a report of `seconds_watched` is credited at most the wall time since the
  previous heartbeat (or the start), so a client cannot claim more time than has passed.
- What a watch counts as:
  - `lesson_observation` — a teacher's (the token's school software names `viewer_teacher_id`) watch of a
    lesson, recorded in the activity log (activities' `record_activity`, kind `lesson_observation`) once it
    ended having lasted at least OBSERVATION_MIN_SECONDS. The activity id is derived from the watch id, so
    a retry is a duplicate, never a second observation.
  - `supervision` — an inspector's (bureau or district token) patrol. Kept here only: activities' actor is
    always a teacher of a school (its `supervision_visit` also needs that teacher and a written report),
    and a bureau or district token is no teacher.
  - `none` — a school token watching without naming a teacher: kept as a view.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from services.common.scope import Scope
from services.common.timeutil import as_utc, utcnow
from services.common.validation import load
from services.resources import access, schemas
from services.resources.exceptions import Conflict, NotFound
from services.resources.models import LiveRecording, Resource, Watch

WATCH_IN = schemas.WatchIn()
HEARTBEAT_IN = schemas.HeartbeatIn()
WATCH_QUERY = schemas.WatchQuery()
ACTIVITY_NAMESPACE = uuid.UUID("6f0c2d1e-5b8a-4c37-9e21-7a3f4d5c6b10")  # watch id → activity id
UNNAMED = "未注明"  # activities requires a subject, grade and title; a lesson may not have said them
PENDING_FOR = timedelta(days=1)  # an observation the activities service never accepted is given up after this


@dataclass(frozen=True)
class Rules:
    heartbeat_seconds: int
    observation_min_seconds: int


@dataclass(frozen=True)
class PendingObservation:
    watch_id: str
    scope: dict[str, Any]
    activity: dict[str, Any]


def activity_id_of(watch_id: str) -> str:
    return str(uuid.uuid5(ACTIVITY_NAMESPACE, f"resources/watch/{watch_id}"))


def _target(session: Session, scope: Scope, kind: str, target_id: int) -> tuple[str, int]:
    """(recording key, school) of a target the token may watch."""
    if kind == "resource":
        resource = access.visible_resource(session, scope, target_id)
        return resource.recording_key, resource.school_id
    live = session.scalars(select(LiveRecording).where(LiveRecording.session_id == target_id,
                                                       access.live_condition(scope))
                           .order_by(LiveRecording.started_at.desc())).first()
    if live is None:
        raise NotFound(f"Session {target_id} is not being recorded live in this token's scope ({scope.describe()}).")
    return live.recording_key, live.school_id


def start(session: Session, scope: Scope, data: Any, rules: Rules, now: datetime | None = None) -> dict[str, Any]:
    values = load(WATCH_IN, data)
    now = now or utcnow()
    key, school_id = _target(session, scope, values["target_kind"], values["target_id"])
    teacher = values["viewer_teacher_id"]
    if teacher is not None:
        scope.require_write()  # the observation is written to the teacher's activity log
        counted_as = "lesson_observation"
    else:
        counted_as = "supervision" if scope.kind in ("bureau", "district") else "none"
    watch = Watch(
        id=str(uuid.uuid4()), bureau_id=scope.bureau_id, viewer_kind=scope.kind, viewer_id=scope.id,
        viewer_teacher_id=teacher, target_kind=values["target_kind"], target_id=values["target_id"],
        recording_key=key, school_id=school_id, counted_as=counted_as, started_at=now, last_heartbeat_at=now,
        seconds_watched=0.0, activity_state="open" if teacher is not None else "none", caller_scope=scope.to_dict(),
    )
    session.add(watch)
    session.flush()
    return {"id": watch.id, "heartbeat_seconds": rules.heartbeat_seconds}


def _own_watch(session: Session, scope: Scope, watch_id: str) -> Watch:
    watch = session.get(Watch, str(watch_id)[:36])
    viewer = (scope.bureau_id, scope.kind, scope.id)
    if watch is None or (watch.bureau_id, watch.viewer_kind, watch.viewer_id) != viewer:
        raise NotFound(f"Watch {watch_id} does not exist or was started by another token's scope.")
    return watch


def _finish(watch: Watch, ended_at: datetime, reason: str, rules: Rules) -> None:
    watch.ended_at = ended_at
    watch.end_reason = reason
    if watch.activity_state == "open":
        watch.activity_state = "pending" if watch.seconds_watched >= rules.observation_min_seconds else "too_short"


def _silent(watch: Watch, rules: Rules, now: datetime) -> bool:
    return now - as_utc(watch.last_heartbeat_at) > timedelta(seconds=2 * rules.heartbeat_seconds)


def heartbeat(session: Session, scope: Scope, watch_id: str, data: Any, rules: Rules,
              now: datetime | None = None) -> None:
    values = load(HEARTBEAT_IN, data)
    now = now or utcnow()
    watch = _own_watch(session, scope, watch_id)
    if watch.ended_at is None and _silent(watch, rules, now):
        _finish(watch, as_utc(watch.last_heartbeat_at), "silent", rules)
    if watch.ended_at is not None:
        raise Conflict(f"Watch {watch_id} ended at {as_utc(watch.ended_at).isoformat()} ({watch.end_reason}); "
                       "start a new one.")
    elapsed = max(0.0, (now - as_utc(watch.last_heartbeat_at)).total_seconds())
    watch.seconds_watched += min(float(values["seconds_watched"]), elapsed)
    watch.last_heartbeat_at = now
    watch.caller_scope = scope.to_dict()


def end(session: Session, scope: Scope, watch_id: str, rules: Rules, now: datetime | None = None) -> None:
    """Ends the watch (again: nothing changes, so a client may retry)."""
    now = now or utcnow()
    watch = _own_watch(session, scope, watch_id)
    if watch.ended_at is not None:
        return
    watch.caller_scope = scope.to_dict()
    if _silent(watch, rules, now):
        _finish(watch, as_utc(watch.last_heartbeat_at), "silent", rules)
    else:
        _finish(watch, now, "ended", rules)


def end_silent(session: Session, rules: Rules, now: datetime | None = None) -> int:
    """End every watch that has been silent for two intervals, at its last heartbeat; how many."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=2 * rules.heartbeat_seconds)
    silent = session.scalars(select(Watch).where(Watch.ended_at.is_(None), Watch.last_heartbeat_at < cutoff)
                             .limit(1000)).all()
    for watch in silent:
        _finish(watch, as_utc(watch.last_heartbeat_at), "silent", rules)
    return len(silent)


def _lesson(session: Session, watch: Watch) -> tuple[int | None, dict[str, str]]:
    source: Resource | LiveRecording | None = session.scalar(
        select(Resource).where(Resource.recording_key == watch.recording_key))
    if source is None:
        source = session.scalar(select(LiveRecording).where(LiveRecording.recording_key == watch.recording_key))
    if source is None:
        return None, {}
    title = source.title or UNNAMED
    return source.teacher_id, {"subject": source.subject or UNNAMED, "grade": source.grade or UNNAMED,
                               "title": title[:200]}


def pending_observations(session: Session, now: datetime | None = None, limit: int = 100,
                         watch_id: str | None = None) -> list[PendingObservation]:
    """Ended teacher watches whose observation is not yet in the activity log (those too old are given up);
    only `watch_id`'s when given."""
    now = now or utcnow()
    todo = []
    query = select(Watch).where(Watch.activity_state == "pending")
    if watch_id is not None:
        query = query.where(Watch.id == str(watch_id)[:36])
    for watch in session.scalars(query.order_by(Watch.ended_at).limit(limit)):
        if now - as_utc(watch.ended_at or now) > PENDING_FOR:
            settle(session, watch.id, "refused", "activities did not accept it within a day")
            continue
        observed, lesson = _lesson(session, watch)
        if observed is None:
            settle(session, watch.id, "refused", "the lesson names no teacher to have been observed")
            continue
        minutes = max(1, min(24 * 60, round(watch.seconds_watched / 60)))
        todo.append(PendingObservation(watch.id, dict(watch.caller_scope or {}), {
            "id": activity_id_of(watch.id), "kind": "lesson_observation", "teacher_id": watch.viewer_teacher_id,
            "occurred_at": as_utc(watch.started_at).isoformat(),
            "details": {"mode": "online", "duration_minutes": minutes, "observed_teacher_id": observed,
                        "lesson": lesson},
        }))
    return todo


def settle(session: Session, watch_id: str, state: str, note: str | None = None,
           activity_id: str | None = None) -> None:
    """What became of a pending observation: `recorded` (with the activity's id) or `refused` (why)."""
    watch = session.get(Watch, watch_id)
    if watch is None or watch.activity_state != "pending":
        return
    watch.activity_state = state
    watch.activity_note = (note or "")[:500] or None
    watch.activity_id = activity_id
    watch.caller_scope = None  # the signed scope is no longer needed


def watch_out(watch: Watch) -> dict[str, Any]:
    return {
        "id": watch.id, "target_kind": watch.target_kind, "target_id": watch.target_id, "school_id": watch.school_id,
        "viewer": f"{watch.viewer_kind} {watch.viewer_id}", "viewer_teacher_id": watch.viewer_teacher_id,
        "counted_as": watch.counted_as, "started_at": as_utc(watch.started_at).isoformat(),
        "ended_at": as_utc(watch.ended_at).isoformat() if watch.ended_at else None,
        "seconds_watched": round(watch.seconds_watched, 3), "activity_id": watch.activity_id,
        "activity_state": watch.activity_state,
    }


def list_watches(session: Session, scope: Scope, params: dict[str, Any]) -> dict[str, Any]:
    """Watches by the token's own scope and of lessons in it (a bureau: all of its bureau's), newest first."""
    values = load(WATCH_QUERY, params)
    conditions = [Watch.bureau_id == scope.bureau_id]
    covered = access.covered_school_ids(session, scope)
    if covered is not None:
        by_me = and_(Watch.viewer_kind == scope.kind, Watch.viewer_id == scope.id)
        conditions.append(or_(by_me, Watch.school_id.in_(covered)) if covered else by_me)
    if values["target_kind"]:
        conditions.append(Watch.target_kind == values["target_kind"])
    total = session.scalar(select(func.count()).select_from(Watch).where(*conditions)) or 0
    rows = session.scalars(select(Watch).where(*conditions).order_by(Watch.started_at.desc(), Watch.id)
                           .limit(values["limit"]).offset(values["offset"])).all()
    return {"items": [watch_out(row) for row in rows], "total": int(total)}
