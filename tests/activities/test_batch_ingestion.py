"""Set-based batch ingestion judges every item like a single record, and bad input never fails a batch."""

from __future__ import annotations

import uuid

import pytest

from services.activities import log, queries, xapi
from services.activities.exceptions import InvalidInput
from tests.activities.test_log import blog_post, events, lesson_prep


def test_a_batch_may_correct_an_item_it_recorded_earlier_but_not_a_later_one(session, bureau_scope):
    first = lesson_prep()
    correction = lesson_prep(corrects=first["id"], details={**first["details"], "duration_minutes": 30})
    second_correction = lesson_prep(corrects=first["id"])
    premature = lesson_prep(corrects=(later := lesson_prep())["id"])
    outcome = log.record_batch(session, bureau_scope, [first, correction, second_correction, premature, later])
    assert [result["status"] for result in outcome["results"]] == [
        "accepted", "accepted", "rejected", "rejected", "accepted"]
    assert outcome["results"][2]["error"] == "Conflict" and outcome["results"][3]["error"] == "NotFound"
    assert log.get_activity(session, bureau_scope, first["id"])["superseded_by"] == correction["id"]
    assert [key for key, _, _ in events(session)] == [
        "activity.recorded.collective_lesson_prep", "activity.corrected.collective_lesson_prep",
        "activity.recorded.collective_lesson_prep"]


def test_a_batch_corrects_an_activity_stored_before_and_marks_it(session, bureau_scope):
    original = log.record(session, bureau_scope, lesson_prep())["activity"]
    outcome = log.record_batch(session, bureau_scope, [lesson_prep(corrects=original["id"]), blog_post()])
    assert outcome["accepted"] == 2
    assert log.get_activity(session, bureau_scope, original["id"])["superseded_by"] == outcome["results"][0]["id"]


@pytest.mark.parametrize("bad, field", [
    ({"teacher_id": 2**63}, "teacher_id"),
    ({"group_id": 2**63}, "group_id"),
    ({"occurred_at": "9999-12-31T23:59:59-12:00"}, "occurred_at"),
    ({"occurred_at": "9999-12-31T23:00:00Z"}, "occurred_at"),
    ({"occurred_at": "1999-12-31T23:59:59Z"}, "occurred_at"),
])
def test_one_unrepresentable_item_gets_its_own_error_and_the_rest_is_recorded(session, bureau_scope, bad, field):
    outcome = log.record_batch(session, bureau_scope, [blog_post(), blog_post(**bad), blog_post()])
    assert [result["status"] for result in outcome["results"]] == ["accepted", "rejected", "accepted"]
    assert outcome["results"][1]["error"] == "InvalidInput" and field in outcome["results"][1]["fields"]
    assert len(events(session)) == 2


def test_a_time_more_than_a_day_ahead_is_refused_but_tomorrow_is_not(session, bureau_scope):
    from datetime import UTC, datetime, timedelta

    soon = (datetime.now(UTC) + timedelta(hours=20)).isoformat()
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    outcome = log.record_batch(session, bureau_scope, [blog_post(occurred_at=soon), blog_post(occurred_at=later)])
    assert [result["status"] for result in outcome["results"]] == ["accepted", "rejected"]
    with pytest.raises(InvalidInput, match="occurred_at"):
        log.record(session, bureau_scope, blog_post(occurred_at=later))


@pytest.mark.parametrize("params", [
    {"since": "9999-12-31T23:59:59-12:00"},
    {"until": "0001-01-01T00:00:00+14:00"},
    {"cursor": xapi.encode_cursor(2**70)},
    {"cursor": "czk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OQ"},
    {"teacher_id": 2**63},
])
def test_queries_out_of_range_are_invalid_input(session, bureau_scope, params):
    with pytest.raises(InvalidInput):
        queries.list_activities(session, bureau_scope, params)
    statement_params = {name: value for name, value in params.items() if name != "teacher_id"}
    if statement_params:
        with pytest.raises(InvalidInput):
            xapi.query_statements(session, bureau_scope, statement_params)


def test_a_batch_of_500_reads_the_database_a_few_times_only(session, bureau_scope):
    from sqlalchemy import event

    statements: list[str] = []
    engine = session.get_bind()
    listener = lambda *args: statements.append(args[2])  # noqa: E731 - conn, cursor, statement, ...
    event.listen(engine, "before_cursor_execute", listener)
    try:
        outcome = log.record_batch(session, bureau_scope, [blog_post(teacher_id=1 + i % 3) for i in range(500)])
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert outcome["accepted"] == 500 and len(events(session)) == 500
    # teachers, named ids, savepoint, activities INSERT, outbox INSERT, release: not 500 × several.
    assert len(statements) <= 10, statements
    assert str(uuid.UUID(outcome["results"][0]["id"]))
