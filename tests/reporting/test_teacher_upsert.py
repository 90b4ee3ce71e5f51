"""A new teacher's `teacher.joined` and `teacher.changed` applied together (one batch) or at once (two
transactions, as two reporting processes would): no key violation, and the newest announcement wins.
Over PostgreSQL, where the race is real."""

from __future__ import annotations

import itertools
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.subscriber import ReceivedEvent
from services.reporting import projection
from services.reporting.models import processed_events, teachers
from tests.common.blocked_transaction import BlockedCall, green_engine

_teacher_ids = itertools.count(int(uuid.uuid4().int % 1000) * 1000 + 910_000)


def teacher_event(routing_key: str, teacher_id: int, time: str, **changes) -> ReceivedEvent:
    body = {"id": teacher_id, "bureau_id": 7, "district_id": 1, "school_id": 11, "staff_number": "T9001",
            "subject": "数学", "grade": "七年级", "active": True, "roles": ["teacher"], "group_ids": [], **changes}
    return ReceivedEvent(body, {"id": str(uuid.uuid4()), "type": routing_key, "time": time,
                                "routing_key": routing_key})


@pytest.fixture
def engine(migrate):
    with green_engine(migrate("reporting")) as engine:
        yield engine


def apply_batch(engine, events: list[ReceivedEvent]) -> None:
    with Session(engine) as session, session.begin():
        projection.apply_events(session, "accounts", processed_events.new_events(session, events))


def stored(engine, teacher_id: int):
    with engine.connect() as connection:
        return connection.execute(select(teachers).where(teachers.c.id == teacher_id)).one()


@pytest.mark.parametrize("order", ["joined first", "changed first"])
def test_joined_and_changed_of_a_new_teacher_in_one_batch(engine, order):
    teacher_id = next(_teacher_ids)
    joined = teacher_event("teacher.joined", teacher_id, "2025-02-01T00:00:00Z")
    changed = teacher_event("teacher.changed", teacher_id, "2025-02-01T00:00:01Z", group_ids=[502, 501],
                            roles=["teacher", "middle_manager"])
    apply_batch(engine, [joined, changed] if order == "joined first" else [changed, joined])
    row = stored(engine, teacher_id)
    assert (row.group_ids, row.roles, row.as_of_event) == ("501,502", "middle_manager,teacher", changed.id)


def test_a_later_batch_with_an_older_event_changes_nothing(engine):
    teacher_id = next(_teacher_ids)
    joined = teacher_event("teacher.joined", teacher_id, "2025-02-01T00:00:00Z")
    left = teacher_event("teacher.left", teacher_id, "2025-02-02T00:00:00Z", active=False)
    apply_batch(engine, [left])
    apply_batch(engine, [joined])
    row = stored(engine, teacher_id)
    assert row.active is False and row.as_of_event == left.id


@pytest.mark.parametrize("newer_second", [True, False])
def test_two_transactions_announcing_a_new_teacher_at_once(engine, newer_second):
    """The second waits for the first's uncommitted row, then must update it (or leave a newer one)."""
    teacher_id = next(_teacher_ids)
    older = teacher_event("teacher.joined", teacher_id, "2025-02-01T00:00:00Z")
    newer = teacher_event("teacher.changed", teacher_id, "2025-02-01T00:00:01Z", group_ids=[501])
    first, second = (older, newer) if newer_second else (newer, older)
    with Session(engine) as session:
        session.begin()
        projection.apply_events(session, "accounts", processed_events.new_events(session, [first]))
        waiting = BlockedCall(lambda: apply_batch(engine, [second]))
        waiting.start_and_wait_for_lock(engine)
        session.commit()
    waiting.finish()
    row = stored(engine, teacher_id)
    assert (row.group_ids, row.as_of_event) == ("501", newer.id)
