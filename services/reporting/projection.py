"""Applying events to the read models, many per transaction; and rebuilding them from all facts.

Incremental and rebuilt read models agree by construction: both turn facts into the same tally
deltas (`tally_deltas`) and add them up; integer sums do not depend on order. Roster rows keep the
newest event by (time, id), and a statement hidden or corrected before it arrived is remembered in
`rpt_voided_statements`, so shuffled and repeated deliveries end in the same state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.common.subscriber import ReceivedEvent
from services.common.timeutil import as_utc
from services.reporting import freshness, rules
from services.reporting.exceptions import InvalidInput
from services.reporting.kinds import (
    ACTIVITY_KINDS,
    MEASURE_COLUMNS,
    count_column,
    online_count_column,
    online_seconds_column,
    seconds_column,
    statement_time,
)
from services.reporting.models import (
    activity_facts,
    alliance_members,
    districts,
    groups,
    processed_events,
    schools,
    tallies,
    teachers,
    voided_statements,
)
from services.reporting.periods import Calendar

# Kept in one place: the xAPI IRIs activities publishes (services/activities/xapi.py).
HOME_PAGE = "https://lianxiao.example"
EXTENSION_BASE = f"{HOME_PAGE}/xapi/extensions/"
ACTIVITY_TYPE_BASE = f"{HOME_PAGE}/xapi/activity-types/"

TallyKey = tuple[str, int, str]  # subject, subject id, period key
Delta = dict[str, int]  # tally column -> amount to add (only the columns one fact touches)
KNOWN_KINDS = frozenset(ACTIVITY_KINDS)


@dataclass(frozen=True)
class ActivityFact:
    event_id: str
    bureau_id: int
    teacher_id: int
    school_id: int
    group_id: int | None
    kind: str
    online: bool
    seconds: int  # the recorded time, exact (what it credits is the rule set's business: kinds.py)
    occurred_at: datetime
    corrects: str | None = None


def parse_moment(text: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError as error:
        raise InvalidInput(f"Not an ISO 8601 time: {text!r}.") from error
    return as_utc(moment)


def fact_from_statement(statement: Mapping[str, Any], event_id: str) -> ActivityFact:
    """The adapter from activities' xAPI statement to what reporting counts (one place to fix)."""
    try:
        extensions = statement["context"]["extensions"]
        account_name = statement["actor"]["account"]["name"]
        prefix, _, teacher_number = str(account_name).partition("/")
        if prefix != "teacher" or not teacher_number.isdigit():
            raise InvalidInput(f"The actor {account_name!r} is not a teacher.")
        kind = extensions.get(EXTENSION_BASE + "kind") or str(
            statement["object"]["definition"]["type"]).removeprefix(ACTIVITY_TYPE_BASE)
        result = statement.get("result", {})
        credited = result.get("extensions", {})
        details = statement["object"].get("definition", {}).get("extensions", {}).get(EXTENSION_BASE + "details")
        seconds, online = statement_time(str(kind), details if isinstance(details, dict) else {}, result,
                                         credited.get(EXTENSION_BASE + "online-hours"),
                                         credited.get(EXTENSION_BASE + "offline-hours"))
        group = extensions.get(EXTENSION_BASE + "group")
        corrected = (statement.get("context", {}).get("statement") or {}).get("id")
        return ActivityFact(
            event_id=str(event_id),
            bureau_id=int(extensions[EXTENSION_BASE + "bureau"]),
            teacher_id=int(teacher_number),
            school_id=int(extensions[EXTENSION_BASE + "school"]),
            group_id=int(group) if group is not None else None,
            kind=str(kind),
            online=online,
            seconds=seconds,
            occurred_at=parse_moment(statement["timestamp"]),
            corrects=str(corrected) if corrected else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise InvalidInput(f"Not an activity statement reporting understands ({error!r}).") from error


def fact_delta(fact: ActivityFact, sign: int = 1) -> Delta:
    """What one fact adds to (or, with sign -1, takes from) every tally it counts in."""
    delta = {"activities": sign}
    if fact.kind in KNOWN_KINDS:  # a kind no rule can name still counts as an activity (crediting nothing)
        delta[count_column(fact.kind)] = sign
        delta[seconds_column(fact.kind)] = sign * fact.seconds
        if fact.online:
            delta[online_count_column(fact.kind)] = sign
            delta[online_seconds_column(fact.kind)] = sign * fact.seconds
    return delta


def tally_keys(fact: ActivityFact, calendar: Calendar) -> list[TallyKey]:
    """Every tally one fact counts in; only those some report reads.

    Teachers: the month, the term and the term-to-date rows (a month's report judges term quotas by
    one row). Groups: month and term. Schools: the ISO week (the weekly activity rule).
    """
    day = calendar.local_date(fact.occurred_at)
    keys = calendar.period_keys(day)
    term = [keys["term"]] if "term" in keys else []
    teacher_periods = [keys["month"], *term, *calendar.term_to_date_keys(day)]
    found = [("teacher", fact.teacher_id, period) for period in teacher_periods]
    found.append(("school", fact.school_id, keys["week"]))
    if fact.group_id is not None:
        found += [("group", fact.group_id, period) for period in [keys["month"], *term]]
    return found


def tally_deltas(fact: ActivityFact, calendar: Calendar, sign: int = 1) -> list[tuple[TallyKey, Delta]]:
    delta = fact_delta(fact, sign)
    return [(key, delta) for key in tally_keys(fact, calendar)]


def fold(facts: Iterable[ActivityFact], calendar_of: Callable[[int], Calendar]) -> dict[TallyKey, Delta]:
    """The tallies of many facts, summed in memory (rebuilds, and the benchmark's consistency check)."""
    totals: dict[TallyKey, Delta] = {}
    sum_into(totals, facts, calendar_of)
    return totals


def _upsert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


ZERO_MEASURES = dict.fromkeys(MEASURE_COLUMNS, 0)


class CalendarCache:
    """Each bureau's calendar (rules in force now), looked up once per unit of work."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.calendars: dict[int, Calendar] = {}

    def __call__(self, bureau_id: int) -> Calendar:
        if bureau_id not in self.calendars:
            self.calendars[bureau_id] = rules.in_force(self.session, bureau_id).calendar
        return self.calendars[bureau_id]


def _fact_row(fact: ActivityFact, calendar: Calendar, counted: bool) -> dict[str, Any]:
    return {
        "event_id": fact.event_id, "bureau_id": fact.bureau_id, "teacher_id": fact.teacher_id,
        "school_id": fact.school_id, "group_id": fact.group_id, "kind": fact.kind, "online": fact.online,
        "seconds": fact.seconds,
        "occurred_at": fact.occurred_at, "local_date": calendar.local_date(fact.occurred_at),
        "corrects": fact.corrects, "counted": counted,
    }


def fact_of_row(row: Mapping[str, Any]) -> ActivityFact:
    occurred = row["occurred_at"]
    return ActivityFact(
        event_id=row["event_id"], bureau_id=row["bureau_id"], teacher_id=row["teacher_id"],
        school_id=row["school_id"], group_id=row["group_id"], kind=row["kind"], online=bool(row["online"]),
        seconds=row["seconds"],
        occurred_at=as_utc(occurred), corrects=row["corrects"],
    )


def remember_voids(session: Session, voids: Mapping[str, str]) -> None:
    """Statements hidden or corrected, remembered (they may not have arrived yet: order must not matter)."""
    if not voids:
        return
    known = set(session.scalars(
        select(voided_statements.c.statement_id).where(voided_statements.c.statement_id.in_(list(voids)))))
    fresh = [{"statement_id": key, "reason": reason} for key, reason in voids.items() if key not in known]
    if fresh:
        session.execute(voided_statements.insert(), fresh)


def record_facts(session: Session, facts: list[ActivityFact], voids: Mapping[str, str],
                 calendar_of: CalendarCache) -> None:
    """Store new facts and stop counting voided ones, the tallies changed by one set-wise upsert.

    The same end state as applying the events one at a time in any order: a fact voided in this batch
    or earlier is stored uncounted; a counted fact voided now is taken back out of its tallies.
    """
    remember_voids(session, voids)
    totals: dict[TallyKey, Delta] = {}
    if voids:
        undone = [fact_of_row(row) for row in session.execute(select(activity_facts).where(
            activity_facts.c.event_id.in_(list(voids)), activity_facts.c.counted.is_(True))).mappings()]
        if undone:
            sum_into(totals, undone, calendar_of, sign=-1)
            session.execute(update(activity_facts).where(
                activity_facts.c.event_id.in_([fact.event_id for fact in undone])).values(counted=False))
    if facts:
        voided = set(voids) | set(session.scalars(select(voided_statements.c.statement_id).where(
            voided_statements.c.statement_id.in_([fact.event_id for fact in facts]))))
        session.execute(activity_facts.insert(), [
            _fact_row(fact, calendar_of(fact.bureau_id), counted=fact.event_id not in voided) for fact in facts])
        sum_into(totals, [fact for fact in facts if fact.event_id not in voided], calendar_of)
    add_totals(session, totals)


def sum_into(totals: dict[TallyKey, Delta], facts: Iterable[ActivityFact], calendar_of: Callable[[int], Calendar],
              sign: int = 1) -> None:
    for fact in facts:
        for key, delta in tally_deltas(fact, calendar_of(fact.bureau_id), sign):
            row = totals.setdefault(key, {})
            for name, amount in delta.items():
                row[name] = row.get(name, 0) + amount


def add_totals(session: Session, totals: Mapping[TallyKey, Delta]) -> None:
    """Add summed deltas to their tally rows: one upsert for all of them (sorted, so two consumers lock
    rows in the same order), then drop rows a void emptied (a rebuild would not have them)."""
    if not totals:
        return
    keys = sorted(totals)
    statement = _upsert(session)(tallies)
    statement = statement.on_conflict_do_update(
        index_elements=["subject", "subject_id", "period"],
        set_={name: tallies.c[name] + statement.excluded[name] for name in MEASURE_COLUMNS},
    )
    session.execute(statement, [
        {"subject": subject, "subject_id": subject_id, "period": period, **ZERO_MEASURES, **totals[key]}
        for key in keys for subject, subject_id, period in [key]])
    emptied = [key for key in keys if totals[key].get("activities", 0) < 0]
    if emptied:
        session.execute(delete(tallies).where(
            tuple_(tallies.c.subject, tallies.c.subject_id, tallies.c.period).in_(emptied),
            tallies.c.activities == 0))


# --- the roster ------------------------------------------------------------------------------------


def teacher_row(body: Mapping[str, Any], moment: datetime, event_id: str) -> dict[str, Any]:
    try:
        return {
            "id": int(body["id"]), "bureau_id": int(body["bureau_id"]),
            "district_id": int(body["district_id"]) if body.get("district_id") is not None else None,
            "school_id": int(body["school_id"]), "staff_number": str(body.get("staff_number") or "")[:40],
            "subject": body.get("subject"), "grade": body.get("grade"), "active": bool(body.get("active", True)),
            "roles": ",".join(sorted(set(body.get("roles") or ["teacher"]))),
            "group_ids": ",".join(str(group) for group in sorted({int(g) for g in body.get("group_ids") or []})),
            "as_of_time": moment, "as_of_event": event_id,
        }
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidInput(f"Not a teacher event reporting understands ({error!r}).") from error


def put_teachers(session: Session, rows: Iterable[dict[str, Any]]) -> None:
    """Keep the newest announcement of each teacher, by (time, event id), in one guarded upsert.

    Folded per teacher first (`teacher.joined` and `teacher.changed` of one teacher often share a batch,
    and one INSERT cannot touch a row twice); the guard, not a look-up before an insert, decides against
    the stored row, so two transactions announcing a new teacher at once cannot both insert it.
    """
    newest: dict[int, dict[str, Any]] = {}
    for row in rows:
        known = newest.get(row["id"])
        if known is None or (row["as_of_time"], row["as_of_event"]) > (known["as_of_time"], known["as_of_event"]):
            newest[row["id"]] = row
    if not newest:
        return
    statement = _upsert(session)(teachers)
    changes = {name: statement.excluded[name] for name in (column.name for column in teachers.c) if name != "id"}
    stored_event: Any = teachers.c.as_of_event
    new_event: Any = statement.excluded.as_of_event
    if session.get_bind().dialect.name == "postgresql":  # ids ordered by code point, as Python orders them
        stored_event, new_event = stored_event.collate("C"), new_event.collate("C")
    session.execute(statement.on_conflict_do_update(
        index_elements=["id"], set_=changes,
        where=tuple_(teachers.c.as_of_time, stored_event) < tuple_(statement.excluded.as_of_time, new_event),
    ), [newest[teacher_id] for teacher_id in sorted(newest)])  # sorted: concurrent batches lock in one order


def _put(session: Session, table: Any, values: dict[str, Any], keys: list[str]) -> None:
    """Insert or overwrite a row whose content only ever comes from one kind of event."""
    statement = _upsert(session)(table).values(**values)
    changes = {name: value for name, value in values.items() if name not in keys}
    session.execute(statement.on_conflict_do_update(index_elements=keys, set_=changes) if changes
                    else statement.on_conflict_do_nothing(index_elements=keys))


def apply_school(session: Session, body: Mapping[str, Any]) -> None:
    _put(session, schools, {
        "id": int(body["id"]), "bureau_id": int(body["bureau_id"]),
        "district_id": int(body["district_id"]) if body.get("district_id") is not None else None,
        "code": str(body.get("code", ""))[:40], "name": str(body.get("name", ""))[:200],
        "kind": str(body.get("kind") or "ordinary")[:20],
    }, ["id"])


def apply_district(session: Session, body: Mapping[str, Any]) -> None:
    _put(session, districts, {"id": int(body["id"]), "bureau_id": int(body["bureau_id"]),
                              "name": str(body.get("name", ""))[:200]}, ["id"])


def apply_group(session: Session, body: Mapping[str, Any]) -> None:
    _put(session, groups, {
        "id": int(body["id"]), "bureau_id": int(body["bureau_id"]),
        "school_id": int(body["school_id"]) if body.get("school_id") is not None else None,
        "kind": str(body.get("kind") or "research")[:20], "name": str(body.get("name", ""))[:200],
        "subject": body.get("subject"), "grade": body.get("grade"),
    }, ["id"])


def apply_alliance(session: Session, body: Mapping[str, Any]) -> None:
    members = set(body.get("member_school_ids") or []) | {body.get("lead_school_id")}
    for school_id in sorted(member for member in members if member is not None):
        _put(session, alliance_members, {"alliance_id": int(body["id"]), "school_id": int(school_id),
                                         "alliance_name": str(body.get("name", ""))[:200]},
             ["alliance_id", "school_id"])


def apply_alliance_member(session: Session, body: Mapping[str, Any]) -> None:
    _put(session, alliance_members, {"alliance_id": int(body["alliance_id"]), "school_id": int(body["school_id"])},
         ["alliance_id", "school_id"])


# --- events ----------------------------------------------------------------------------------------

ROSTER_APPLIERS: dict[str, Callable[[Session, Mapping[str, Any]], None]] = {
    "school.created": apply_school,
    "district.created": apply_district,
    "group.created": apply_group,
    "alliance.created": apply_alliance,
    "school.joined_alliance": apply_alliance_member,
}
TEACHER_EVENTS = ("teacher.joined", "teacher.changed", "teacher.left")


def apply_events(session: Session, source: str, events: list[ReceivedEvent]) -> None:
    """Apply events not applied before (the subscriber deduplicates) in the caller's transaction.

    Activity facts are gathered and recorded set-wise (`record_facts`), teachers likewise (`put_teachers`,
    the newest by time); the other roster events are applied in turn (each only ever sets one row's content,
    so order does not matter). The newest event time is kept as
    the read models' "as of" for `source`.
    """
    facts: list[ActivityFact] = []
    voids: dict[str, str] = {}
    teacher_rows: list[dict[str, Any]] = []
    for event in events:
        routing_key, body = event.routing_key, event.body
        try:
            if routing_key.startswith("activity.hidden."):
                voids.setdefault(str(body["object"]["id"]), "hidden")
            elif routing_key.startswith(("activity.recorded.", "activity.corrected.")):
                fact = fact_from_statement(body, event.id)
                facts.append(fact)
                if fact.corrects:
                    voids.setdefault(fact.corrects, "corrected")
            elif routing_key in TEACHER_EVENTS:
                moment = parse_moment(event.attributes.get("time") or datetime.now(UTC).isoformat())
                teacher_rows.append(teacher_row(body, moment, event.id))
            elif routing_key in ROSTER_APPLIERS:
                ROSTER_APPLIERS[routing_key](session, body)
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            raise InvalidInput(f"A {routing_key} event reporting cannot read ({error!r}).") from error
    put_teachers(session, teacher_rows)
    try:
        record_facts(session, facts, voids, CalendarCache(session))
    except OverflowError as error:  # a time whose local date is beyond the calendar (year 9999 + zone)
        raise InvalidInput(f"An activity's time cannot be placed in a period ({error}).") from error
    freshness.note_applied(session, source, events)


def apply_event(session: Session, routing_key: str, body: Mapping[str, Any], attributes: Mapping[str, Any]) -> bool:
    """Apply one event inside the caller's transaction, once; False if it was applied before."""
    if not attributes.get("id"):
        raise InvalidInput("An event without an id cannot be deduplicated.")
    event = ReceivedEvent(dict(body), {**attributes, "routing_key": routing_key})
    if not processed_events.new_events(session, [event]):
        return False
    source = "activities" if routing_key.startswith("activity.") else "accounts"
    apply_events(session, source, [event])
    return True


def rebuild_tallies(session: Session) -> int:
    """Recompute every tally from the counted facts (after terms change); returns the rows written."""
    session.execute(delete(tallies))
    calendar_of = CalendarCache(session)
    rows = session.execute(select(activity_facts).where(activity_facts.c.counted.is_(True))).mappings()
    totals = fold((fact_of_row(row) for row in rows), calendar_of)
    insert_rows = [{"subject": subject, "subject_id": subject_id, "period": period, **ZERO_MEASURES, **sums}
                   for (subject, subject_id, period), sums in totals.items()]
    for start in range(0, len(insert_rows), 1000):
        session.execute(tallies.insert(), insert_rows[start:start + 1000])
    return len(insert_rows)
