"""A new teacher's `teacher.joined` and `teacher.changed` applied in one transaction or at once (two
transactions, as two activities processes would): no key violation, the newest announcement wins.
Over PostgreSQL, where the race is real."""

from __future__ import annotations

import itertools
import json
import uuid

import pytest
from sqlalchemy.orm import Session

from services.activities import roster
from services.activities.models import RosterTeacher
from tests.activities.activity_fixtures import MASTER_SCHOOL, teacher_body
from tests.common.blocked_transaction import BlockedCall, green_engine

_teacher_ids = itertools.count(int(uuid.uuid4().int % 1000) * 1000 + 920_000)
JOINED_AT, CHANGED_AT = "2025-01-01T00:00:00Z", "2025-01-01T00:00:01Z"


@pytest.fixture
def engine(migrate):
    with green_engine(migrate("activities")) as engine:
        yield engine


def stored(engine, teacher_id: int) -> RosterTeacher:
    with Session(engine) as session:
        return session.get(RosterTeacher, teacher_id)


def test_joined_and_changed_in_one_transaction(engine):
    teacher_id = next(_teacher_ids)
    with Session(engine) as session, session.begin():
        assert roster.apply_teacher_event(session, "teacher.joined", teacher_body(teacher_id, MASTER_SCHOOL, 310),
                                          JOINED_AT)
        before = session.get(RosterTeacher, teacher_id)
        assert roster.apply_teacher_event(session, "teacher.changed",
                                          teacher_body(teacher_id, MASTER_SCHOOL, 310, group_ids=(7, 3)), CHANGED_AT)
        assert roster.groups_of(session.get(RosterTeacher, teacher_id)) == [3, 7] and before.group_ids == "[3, 7]"
        assert not roster.apply_teacher_event(session, "teacher.left", teacher_body(teacher_id, MASTER_SCHOOL, 310),
                                              JOINED_AT)  # older than what is known: ignored
    row = stored(engine, teacher_id)
    assert (json.loads(row.group_ids), row.active) == ([3, 7], True)


@pytest.mark.parametrize("newer_second", [True, False])
def test_two_transactions_announcing_a_new_teacher_at_once(engine, newer_second):
    teacher_id = next(_teacher_ids)
    older = ("teacher.joined", teacher_body(teacher_id, MASTER_SCHOOL, 310), JOINED_AT)
    newer = ("teacher.changed", teacher_body(teacher_id, MASTER_SCHOOL, 310, group_ids=(5,)), CHANGED_AT)
    first, second = (older, newer) if newer_second else (newer, older)

    def apply_second() -> None:
        with Session(engine) as other, other.begin():
            assert roster.apply_teacher_event(other, *second) is newer_second

    with Session(engine) as session:
        session.begin()
        roster.apply_teacher_event(session, *first)
        waiting = BlockedCall(apply_second)
        waiting.start_and_wait_for_lock(engine)
        session.commit()
    waiting.finish()
    assert json.loads(stored(engine, teacher_id).group_ids) == [5]
