"""Recording activities: one or a batch, idempotent by the client's id with xAPI's rules.

- The same id with the same content returns the original (status "duplicate"); the same id with
  different content is a `Conflict`; one id twice inside a batch is `InvalidInput` for the batch.
- Not yours, not there: an activity outside the caller's scope (as an id, a correction's or a
  comment's target) is answered like a missing one; see `unusable_id` for the one thing a taken id shows.
- In a batch every item is judged on its own by the same rules: a bad item is rejected with its
  reason and never costs the good ones. The batch is recorded set-wise (a few queries and two bulk
  INSERTs for up to 500 items, see `record_batch`). A database outage fails the whole batch
  (`ServiceUnavailable`, 503): nothing is half stored, and a retry returns stored items as duplicates.
- Every stored activity adds its xAPI statement to the outbox in the same transaction
  (`activity.recorded.<kind>`, or `activity.corrected.<kind>` for a correction). The event id is the
  statement id, so a subscriber's deduplication and xAPI's idempotency agree.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

from marshmallow import ValidationError
from sqlalchemy import Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.activities import roster, schemas, xapi
from services.activities.exceptions import Conflict, InvalidInput, NotFound
from services.activities.models import Activity, RosterTeacher, outbox
from services.common.errors import LianxiaoError, ServiceUnavailable
from services.common.events import OutboxEvent
from services.common.scope import Scope

ACTIVITY_OUT = schemas.ActivityOut()
ACTIVITY_TABLE = cast(Table, Activity.__table__)  # a declarative class's table (typed as FromClause)
# Schema instances are reused: building one deep-copies its fields, which cost more than loading an item.
ACTIVITY_IN = schemas.ActivityIn()
KIND_SCHEMAS: dict[str, schemas.KindSchema] = {name: kind() for name, kind in schemas.KINDS.items()}


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
        values = ACTIVITY_IN.load(data)
    except ValidationError as error:
        errors.update(error.messages if isinstance(error.messages, dict) else {"_schema": error.messages})
        values = error.valid_data if isinstance(error.valid_data, dict) else {}
    kind_name = data.get("kind")
    kind = schemas.KINDS.get(kind_name) if isinstance(kind_name, str) else None
    if kind is not None and isinstance(kind_name, str) and isinstance(data.get("details"), dict):
        try:
            values["details"] = KIND_SCHEMAS[kind_name].load(data["details"])
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
    teachers = {} if (found := session.get(RosterTeacher, values["teacher_id"])) is None else {found.id: found}
    return resolve(values, teachers, scope)


def resolve(values: dict[str, Any], teachers: Mapping[int, RosterTeacher], scope: Scope | None) -> Prepared:
    """A validated activity with its teacher (looked up by the caller, one or many at once) checked."""
    teacher = teachers.get(values["teacher_id"])
    if scope is None:
        if teacher is None:
            raise InvalidInput(f"Teacher {values['teacher_id']} is not known to activities.",
                               {"teacher_id": ["Unknown teacher."]})
    else:
        teacher = roster.check_teacher_scope(teacher, scope, values["teacher_id"])
    if not teacher.active:
        raise InvalidInput(f"Teacher {teacher.id} has left; activities can no longer be recorded for them.",
                           {"teacher_id": ["Teacher has left."]})
    if values["group_id"] is not None and values["group_id"] not in roster.groups_of(teacher):
        raise InvalidInput(f"Teacher {teacher.id} is not a member of group {values['group_id']}.",
                           {"group_id": ["Not a group of this teacher."]})
    kind = KIND_SCHEMAS[values["kind"]]
    minutes, online_hours, offline_hours = kind.recorded_time(values["details"])
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


# --- not yours, not there (issue 12, item 15) ------------------------------------------------------
# The id look-ups below read an id wherever it is stored (ids are unique across bureaus: one xAPI
# statement id space), then judge it by the caller's view: an activity outside the caller's scope is
# answered exactly as a missing one, and its content is never compared, returned or described.


def in_view(scope: Scope | None, row: Activity | SimpleNamespace | None) -> bool:
    """Whether the caller may name this activity as its own (scope None: the service's own handlers)."""
    return row is not None and (scope is None or scope.covers_school(row.bureau_id, row.district_id, row.school_id))


def unusable_id(activity_id: str) -> Conflict:
    """The one answer for an id the caller cannot record under, whoever holds it.

    The id holds other content in the caller's view, or any content outside it: the same words either
    way, so a refusal neither confirms that another bureau recorded it nor says what it holds. (That
    the id is taken cannot be hidden: it cannot be stored twice. A client's ids are fresh UUIDs, so
    only someone who already learned another bureau's id meets this.)
    """
    return Conflict(f"Activity id {activity_id} cannot be used for this activity; record it under a new id "
                    "(a correction is a new id with `corrects`).", {"id": ["Id already taken."]})


def judge_repeat(prepared: Prepared, original: Activity | None, scope: Scope | None = None) -> bool:
    """xAPI's idempotency: False when the id is new, True when it repeats the same content."""
    if original is None:
        return False
    if not in_view(scope, original) or original.content_hash != prepared.content_hash:
        raise unusable_id(prepared.id)
    return True


def comment_targets(prepared: Prepared) -> list[str]:
    """The activities a comment names (the one commented on, the comment replied to)."""
    if prepared.kind != "comment":
        return []
    return [prepared.details[name] for name in ("on_activity_id", "in_reply_to_id") if prepared.details.get(name)]


def judge_comment(prepared: Prepared, scope: Scope | None, *found: Mapping[str, Activity | SimpleNamespace]) -> None:
    """A comment names activities of the caller's bureau: the network's schools comment on each other's."""
    for target in comment_targets(prepared):
        row = next((rows[target] for rows in found if target in rows), None)
        if row is None or (scope is not None and row.bureau_id != scope.bureau_id):
            field = "on_activity_id" if target == prepared.details["on_activity_id"] else "in_reply_to_id"
            raise NotFound(f"Activity {target} (commented on) does not exist.",
                           {"details": {field: ["Unknown activity."]}})


def judge_correction(prepared: Prepared, original: Activity | SimpleNamespace | None,
                     superseded_by: str | None, scope: Scope | None = None) -> None:
    """A correction names an existing activity of the same teacher and kind, not corrected yet."""
    if original is None or not in_view(scope, original):
        raise NotFound(f"Activity {prepared.corrects_id} (to be corrected) does not exist.",
                       {"corrects": ["Unknown activity."]})
    if original.teacher_id != prepared.teacher.id or original.kind != prepared.kind:
        raise InvalidInput("A correction keeps the teacher and kind of the activity it corrects.",
                           {"corrects": ["Different teacher or kind."]})
    if superseded_by is not None:
        raise Conflict(f"Activity {original.id} was already corrected by {superseded_by}; "
                       "correct that one.", {"corrects": ["Already corrected."]})


def _existing(session: Session, prepared: Prepared, scope: Scope | None) -> dict[str, Any] | None:
    original = session.scalar(select(Activity).where(Activity.id == prepared.id))
    if not judge_repeat(prepared, original, scope):
        return None
    assert original is not None
    return {"status": "duplicate", "activity": activity_out(original)}


def new_activity(prepared: Prepared, recorded_by: str, recorded_at: datetime) -> Activity:
    """A new activity (not yet added to a session)."""
    return Activity(**new_row(prepared, recorded_by, recorded_at))


def new_row(prepared: Prepared, recorded_by: str, recorded_at: datetime) -> dict[str, Any]:
    """The column values of a new activity."""
    object_id = prepared.id
    if prepared.kind == "comment":
        object_id = prepared.details["on_activity_id"]
    return dict(
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
        recorded_at=recorded_at,
        recorded_by=recorded_by[:100],
        corrects_id=prepared.corrects_id,
        superseded_by_id=None,
        hidden=False,
        hidden_at=None,
        hidden_by_teacher_id=None,
        hidden_reason=None,
        hidden_statement_id=None,
    )


def event_of(activity: Activity | SimpleNamespace, corrects: bool) -> OutboxEvent:
    verb = "corrected" if corrects else "recorded"
    return OutboxEvent(f"activity.{verb}.{activity.kind}", xapi.statement(activity), bureau_id=activity.bureau_id,
                       subject=f"activity/{activity.id}", event_id=activity.id, time=activity.recorded_at)


def _store(session: Session, prepared: Prepared, recorded_by: str, scope: Scope | None) -> Activity:
    if targets := comment_targets(prepared):  # judged first, as in `record_batch`
        judge_comment(prepared, scope, {row.id: row for row in session.scalars(
            select(Activity).where(Activity.id.in_(targets)))})
    original = None
    if prepared.corrects_id is not None:
        original = session.scalar(select(Activity).where(Activity.id == prepared.corrects_id))
        judge_correction(prepared, original, original.superseded_by_id if original is not None else None, scope)
    activity = new_activity(prepared, recorded_by, datetime.now(UTC))
    session.add(activity)
    session.flush()
    if original is not None:
        original.superseded_by_id = activity.id  # a marker: the original's content never changes
    outbox.add_many(session, [event_of(activity, original is not None)])
    session.flush()
    return activity


def record_prepared(session: Session, prepared: Prepared, recorded_by: str,
                    scope: Scope | None = None) -> dict[str, Any]:
    """Store one validated activity; scope None: the service's own event handlers, which see everything."""
    duplicate = _existing(session, prepared, scope)
    if duplicate is not None:
        return duplicate
    try:
        with session.begin_nested():
            activity = _store(session, prepared, recorded_by, scope)
    except IntegrityError:
        # Someone stored the same id between our check and our insert: judge it like any repeat.
        duplicate = _existing(session, prepared, scope)
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
    return record_prepared(session, prepared, recorder_of(scope), scope)


def record_batch(session: Session, scope: Scope, items: Any) -> dict[str, Any]:
    """Record up to 500 activities; each gets accepted, duplicate or rejected with its reason.

    Set-based: every item is validated first, then the batch's teachers and the activities it names
    (its own ids, the ones it corrects) are read in one query each, and the new activities and their
    events are inserted in one statement each. Each item is judged by the same rules, in the same
    order, as `record`; an item never costs the others.
    """
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
    results: list[dict[str, Any]] = [{} for _ in items]

    def settle(index: int, status: str, activity_id: str) -> None:
        results[index] = {"index": index, "id": activity_id, "status": status}

    def reject(index: int, error: LianxiaoError) -> None:
        item_id = items[index].get("id") if isinstance(items[index], dict) else None
        results[index] = {
            "index": index, "id": item_id if isinstance(item_id, str) else None, "status": "rejected",
            "error": type(error).__name__, "reason": error.detail, "fields": error.fields,
        }

    validated: dict[int, dict[str, Any]] = {}
    for index, item in enumerate(items):
        try:
            validated[index] = validate_activity(item)
        except LianxiaoError as error:
            reject(index, error)
    teachers = roster.teachers_by_id(session, {values["teacher_id"] for values in validated.values()})
    prepared: dict[int, Prepared] = {}
    for index, values in validated.items():
        try:
            prepared[index] = resolve(values, teachers, scope)
        except LianxiaoError as error:
            reject(index, error)
    named = {item.id for item in prepared.values()} | {item.corrects_id for item in prepared.values()
                                                        if item.corrects_id is not None}
    named |= {target for item in prepared.values() for target in comment_targets(item)}
    known = {row.id: row for row in session.scalars(select(Activity).where(Activity.id.in_(named)))} if named else {}

    recorded_at = datetime.now(UTC)
    # New in this batch, by id (a later item may correct an earlier one). Plain rows, not ORM objects:
    # they are inserted with one Core INSERT, and building 500 mapped objects cost more than the insert.
    fresh: dict[str, SimpleNamespace] = {}
    superseded: dict[str, str] = {}  # corrected id -> the id of the correction in this batch
    accepted: list[tuple[int, Prepared]] = []
    for index, item in prepared.items():
        try:
            if judge_repeat(item, known.get(item.id), scope):
                settle(index, "duplicate", item.id)
                continue
            judge_comment(item, scope, known, fresh)  # before a correction marks what it corrects
            if item.corrects_id is not None:
                original: Activity | SimpleNamespace | None = known.get(item.corrects_id) or fresh.get(
                    item.corrects_id)
                earlier = superseded.get(item.corrects_id) or (original.superseded_by_id if original else None)
                judge_correction(item, original, earlier, scope)
                superseded[item.corrects_id] = item.id
            fresh[item.id] = SimpleNamespace(**new_row(item, recorded_by, recorded_at))
            accepted.append((index, item))
            settle(index, "accepted", item.id)
        except LianxiaoError as error:
            reject(index, error)
    if accepted:
        try:
            with session.begin_nested():
                _insert_batch(session, [fresh[item.id] for _, item in accepted], superseded, known)
        except IntegrityError:
            # A concurrent request stored one of these ids between our look-up and our insert: judge
            # each item again on its own, exactly as `record` would.
            for index, item in accepted:
                try:
                    settle(index, record_prepared(session, item, recorded_by, scope)["status"], item.id)
                except ServiceUnavailable:
                    raise  # not this item's fault: the whole batch fails and is retried
                except LianxiaoError as error:
                    reject(index, error)
    counts = {status: sum(1 for result in results if result["status"] == status)
              for status in ("accepted", "duplicate", "rejected")}
    return {"results": results, **counts}


def _insert_batch(session: Session, activities: list[SimpleNamespace], superseded: dict[str, str],
                  known: Mapping[str, Activity]) -> None:
    """One INSERT for the activities, one for their events; superseded originals get their marker."""
    corrected_here = set(superseded)
    for activity in activities:
        activity.superseded_by_id = superseded.get(activity.id)
    session.execute(insert(ACTIVITY_TABLE), [vars(activity) for activity in activities])
    outbox.add_many(session, [event_of(activity, activity.corrects_id is not None) for activity in activities])
    for original_id in corrected_here & set(known):
        known[original_id].superseded_by_id = superseded[original_id]  # a marker: content never changes
    session.flush()


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

