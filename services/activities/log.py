"""Recording activities: one or a batch, idempotent by the client's id with xAPI's rules.

- The same id with the same content returns the original (status "duplicate"); the same id with
  different content is a `Conflict`; one id twice inside a batch is `InvalidInput` for the batch.
- In a batch every item is validated and stored on its own (a savepoint each): a bad item is
  rejected with its reason and never costs the good ones.
- Every stored activity adds its xAPI statement to the outbox in the same transaction
  (`activity.recorded.<kind>`, or `activity.corrected.<kind>` for a correction). The event id is the
  statement id, so a subscriber's deduplication and xAPI's idempotency agree.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from marshmallow import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.activities import roster, schemas, xapi
from services.activities.exceptions import Conflict, InvalidInput, NotFound
from services.activities.models import Activity, RosterTeacher, outbox
from services.common.errors import LianxiaoError, ServiceUnavailable
from services.common.scope import Scope

ACTIVITY_OUT = schemas.ActivityOut()


def _plain(value: Any) -> Any:
    """Validated values as JSON-ready data: UTC timestamps, decimal hours as numbers, UUIDs as text."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, datetime):
        return xapi.iso(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


@dataclass
class Prepared:
    """A validated activity, ready to be stored."""

    id: str
    kind: str
    teacher: RosterTeacher
    group_id: int | None
    occurred_at: datetime
    details: dict[str, Any]
    corrects_id: str | None
    duration_minutes: int
    online_hours: Decimal
    offline_hours: Decimal
    content_hash: str
    id_given: bool


def validate_activity(data: Any, *, from_client: bool = True) -> dict[str, Any]:
    """The envelope and the kind's details, every problem named at once (details' under `details`)."""
    if not isinstance(data, dict):
        raise InvalidInput("Expected a JSON object.", {"_schema": ["Expected a JSON object."]})
    errors: dict[str, Any] = {}
    try:
        values = schemas.ActivityIn().load(data)
    except ValidationError as error:
        errors.update(error.messages if isinstance(error.messages, dict) else {"_schema": error.messages})
        values = error.valid_data if isinstance(error.valid_data, dict) else {}
    kind_name = data.get("kind")
    kind = schemas.KINDS.get(kind_name) if isinstance(kind_name, str) else None
    if kind is not None and isinstance(data.get("details"), dict):
        try:
            values["details"] = kind().load(data["details"])
        except ValidationError as error:
            errors["details"] = error.messages
        if from_client and not kind.recordable_by_clients:
            errors["kind"] = [f"{kind_name!r} is recorded from the classroom relay's events only."]
    elif kind is None and "kind" not in errors:
        errors["kind"] = ["Unknown kind."]
    if errors:
        if "kind" in errors and kind is None:
            errors["kind"] = [f"Unknown kind {kind_name!r}; known kinds: {', '.join(sorted(schemas.KINDS))}."]
        names = ", ".join(sorted(_error_paths(errors)))
        raise InvalidInput(f"Invalid fields: {names}.", errors)
    return values


def _error_paths(errors: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for name, message in errors.items():
        path = f"{prefix}{name}"
        if isinstance(message, dict):
            paths.extend(_error_paths(message, f"{path}."))
        else:
            paths.append(path)
    return paths


def prepare(
    session: Session, scope: Scope | None, data: Any, *, from_client: bool = True
) -> Prepared:
    """Validate an activity and resolve its teacher (scope None: the service's own event handlers)."""
    values = validate_activity(data, from_client=from_client)
    if scope is None:
        teacher = session.get(RosterTeacher, values["teacher_id"])
        if teacher is None:
            raise InvalidInput(f"Teacher {values['teacher_id']} is not known to activities.",
                               {"teacher_id": ["Unknown teacher."]})
    else:
        teacher = roster.teacher_in_scope(session, scope, values["teacher_id"])
    if not teacher.active:
        raise InvalidInput(f"Teacher {teacher.id} has left; activities can no longer be recorded for them.",
                           {"teacher_id": ["Teacher has left."]})
    if values["group_id"] is not None and values["group_id"] not in roster.groups_of(teacher):
        raise InvalidInput(f"Teacher {teacher.id} is not a member of group {values['group_id']}.",
                           {"group_id": ["Not a group of this teacher."]})
    kind = schemas.KINDS[values["kind"]]()
    minutes, online_hours, offline_hours = kind.credit(values["details"])
    details = _plain(values["details"])
    corrects_id = str(values["corrects"]) if values["corrects"] else None
    canonical = {
        "kind": values["kind"],
        "teacher_id": teacher.id,
        "group_id": values["group_id"],
        "occurred_at": xapi.iso(values["occurred_at"]),
        "details": details,
        "corrects": corrects_id,
    }
    content_hash = hashlib.sha256(json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return Prepared(
        id=str(values["id"] or uuid.uuid4()),
        kind=values["kind"],
        teacher=teacher,
        group_id=values["group_id"],
        occurred_at=values["occurred_at"].astimezone(UTC),  # UTC in storage: SQLite keeps no offset
        details=details,
        corrects_id=corrects_id,
        duration_minutes=minutes,
        online_hours=online_hours,
        offline_hours=offline_hours,
        content_hash=content_hash,
        id_given=values["id"] is not None,
    )


def activity_out(activity: Activity) -> dict[str, Any]:
    data = ACTIVITY_OUT.dump(activity)
    data["label"] = schemas.KINDS[activity.kind].label
    for name in ("occurred_at", "recorded_at", "hidden_at"):
        moment = getattr(activity, name)
        data[name] = xapi.iso(moment) if moment is not None else None
    return data


def _existing(session: Session, prepared: Prepared) -> dict[str, Any] | None:
    """xAPI's idempotency: None when the id is new, the original when the content is the same."""
    original = session.scalar(select(Activity).where(Activity.id == prepared.id))
    if original is None:
        return None
    if original.content_hash != prepared.content_hash:
        raise Conflict(
            f"Activity {prepared.id} was already recorded with different content; "
            "record a correction (a new id with `corrects`) instead of reusing the id.",
            {"id": ["Already used for different content."]},
        )
    return {"status": "duplicate", "activity": activity_out(original)}


def _store(session: Session, prepared: Prepared, recorded_by: str) -> Activity:
    original = None
    if prepared.corrects_id is not None:
        original = session.scalar(select(Activity).where(Activity.id == prepared.corrects_id))
        if original is None:
            raise NotFound(f"Activity {prepared.corrects_id} (to be corrected) does not exist.",
                           {"corrects": ["Unknown activity."]})
        if original.teacher_id != prepared.teacher.id or original.kind != prepared.kind:
            raise InvalidInput("A correction keeps the teacher and kind of the activity it corrects.",
                               {"corrects": ["Different teacher or kind."]})
        if original.superseded_by_id is not None:
            raise Conflict(f"Activity {original.id} was already corrected by {original.superseded_by_id}; "
                           "correct that one.", {"corrects": ["Already corrected."]})
    object_id = prepared.id
    if prepared.kind == "comment":
        object_id = prepared.details["on_activity_id"]
    activity = Activity(
        id=prepared.id,
        kind=prepared.kind,
        object_id=object_id,
        teacher_id=prepared.teacher.id,
        school_id=prepared.teacher.school_id,
        district_id=prepared.teacher.district_id,
        bureau_id=prepared.teacher.bureau_id,
        group_id=prepared.group_id,
        occurred_at=prepared.occurred_at,
        duration_minutes=prepared.duration_minutes,
        online_hours=prepared.online_hours,
        offline_hours=prepared.offline_hours,
        details=json.dumps(prepared.details, ensure_ascii=False, sort_keys=True),
        content_hash=prepared.content_hash,
        recorded_at=datetime.now(UTC),
        recorded_by=recorded_by[:100],
        corrects_id=prepared.corrects_id,
        hidden=False,
    )
    session.add(activity)
    session.flush()
    if original is not None:
        original.superseded_by_id = activity.id  # a marker: the original's content never changes
    verb = "corrected" if original is not None else "recorded"
    outbox.add(
        session, f"activity.{verb}.{activity.kind}", xapi.statement(activity),
        bureau_id=activity.bureau_id, subject=f"activity/{activity.id}", event_id=activity.id,
        time=activity.recorded_at,
    )
    session.flush()
    return activity


def record_prepared(session: Session, prepared: Prepared, recorded_by: str) -> dict[str, Any]:
    duplicate = _existing(session, prepared)
    if duplicate is not None:
        return duplicate
    try:
        with session.begin_nested():
            activity = _store(session, prepared, recorded_by)
    except IntegrityError:
        # Someone stored the same id between our check and our insert: judge it like any repeat.
        duplicate = _existing(session, prepared)
        if duplicate is None:
            raise
        return duplicate
    return {"status": "accepted", "activity": activity_out(activity)}


def recorder_of(scope: Scope) -> str:
    return f"token/{scope.token_id}" if scope.token_id is not None else f"{scope.kind}/{scope.id}"


def record(session: Session, scope: Scope, data: Any) -> dict[str, Any]:
    """Record one activity: {"status": "accepted"|"duplicate", "activity": {...}}; errors are raised."""
    scope.require_write()
    prepared = prepare(session, scope, data)
    return record_prepared(session, prepared, recorder_of(scope))


def record_batch(session: Session, scope: Scope, items: Any) -> dict[str, Any]:
    """Record up to 500 activities; each gets accepted, duplicate or rejected with its reason."""
    scope.require_write()
    if not isinstance(items, list):
        raise InvalidInput("A batch is a JSON array of activities.", {"_schema": ["Expected an array."]})
    if not items:
        raise InvalidInput("A batch needs at least one activity.", {"_schema": ["Empty batch."]})
    if len(items) > schemas.MAX_BATCH:
        raise InvalidInput(f"A batch holds at most {schemas.MAX_BATCH} activities; this one has {len(items)}.",
                           {"_schema": [f"More than {schemas.MAX_BATCH} items."]})
    _refuse_repeated_ids(items)
    recorded_by = recorder_of(scope)
    results = []
    for index, item in enumerate(items):
        try:
            prepared = prepare(session, scope, item)
            outcome = record_prepared(session, prepared, recorded_by)
            results.append({"index": index, "id": outcome["activity"]["id"], "status": outcome["status"]})
        except ServiceUnavailable:
            # Not this item's fault: the whole batch fails (503) and the client retries it; items stored
            # before the outage come back as duplicates, so nothing is lost or doubled.
            raise
        except LianxiaoError as error:
            item_id = item.get("id") if isinstance(item, dict) else None
            results.append({
                "index": index, "id": item_id if isinstance(item_id, str) else None, "status": "rejected",
                "error": type(error).__name__, "reason": error.detail, "fields": error.fields,
            })
    counts = {status: sum(1 for result in results if result["status"] == status)
              for status in ("accepted", "duplicate", "rejected")}
    return {"results": results, **counts}


def _refuse_repeated_ids(items: list[Any]) -> None:
    """xAPI: one statement id twice in one request is a bad request, not two attempts."""
    seen: dict[str, int] = {}
    repeated: dict[str, list[str]] = {}
    for index, item in enumerate(items):
        raw = item.get("id") if isinstance(item, dict) else None
        if not isinstance(raw, str):
            continue
        try:
            key = str(uuid.UUID(raw))
        except ValueError:
            continue  # reported as that item's own validation error
        if key in seen:
            repeated.setdefault(str(seen[key]), []).append(f"Same id as item {seen[key]}.")
            repeated[str(index)] = [f"Same id as item {seen[key]}."]
        else:
            seen[key] = index
    if repeated:
        indices = ", ".join(sorted(repeated, key=int))
        raise InvalidInput(
            f"The batch repeats activity ids (items {indices}); nothing was recorded.",
            {"items": repeated},
        )


def get_activity(session: Session, scope: Scope, activity_id: str) -> dict[str, Any]:
    return activity_out(find_in_scope(session, scope, activity_id))


def find_in_scope(session: Session, scope: Scope, activity_id: Any) -> Activity:
    try:
        key = str(uuid.UUID(str(activity_id)))
    except ValueError as error:
        raise InvalidInput(f"{activity_id!r} is not an activity id (a UUID).", {"id": ["Not a UUID."]}) from error
    activity = session.scalar(xapi.in_scope(select(Activity).where(Activity.id == key), scope))
    if activity is None:
        raise NotFound(f"No activity {key} in this token's scope ({scope.describe()}).")
    return activity

