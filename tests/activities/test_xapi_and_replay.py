"""Unit tests of the xAPI statement query and of replay's selection (SQLite, publishing captured)."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import update

from services.activities import log, replay, xapi
from services.activities.exceptions import Forbidden, InvalidInput
from services.activities.models import outbox
from services.common.scope import Scope
from tests.activities.activity_fixtures import BUREAU, MASTER_SCHOOL


def post(teacher_id: int, title: str = "教学反思") -> dict:
    return {"id": str(uuid.uuid4()), "kind": "blog_post", "teacher_id": teacher_id,
            "occurred_at": "2025-03-05T20:00:00+08:00", "details": {"title": title, "word_count": 800}}


def teacher_agent(teacher_id: int) -> str:
    return json.dumps({"account": {"homePage": xapi.HOME_PAGE, "name": f"teacher/{teacher_id}"}})


@pytest.mark.parametrize(("pattern", "key", "expected"), [
    ("activity.recorded.*", "activity.recorded.blog_post", True),
    ("activity.recorded.*", "activity.hidden.comment", False),
    ("activity.#", "activity.hidden.comment", True),
    ("#", "teacher.joined", True),
    ("activity.*.comment", "activity.hidden.comment", True),
    ("activity.*", "activity.recorded.blog_post", False),
    ("#.comment", "activity.recorded.comment", True),
])
def test_topic_matching_follows_amqp(pattern, key, expected):
    assert replay.topic_matches(pattern, key) is expected


def test_replay_sends_published_matching_events_in_order_with_their_ids(session, bureau_scope):
    recorded = [log.record(session, bureau_scope, post(1))["activity"]["id"] for _ in range(3)]
    log.record(session, bureau_scope, {"kind": "offline_study", "teacher_id": 1,
                                       "occurred_at": "2025-03-05T20:00:00+08:00",
                                       "details": {"title": "研修", "hours": 2}})
    session.execute(update(outbox.table).values(published_at=outbox.table.c.time))
    sent: list[tuple] = []
    outcome = replay.replay(session, bureau_scope, {
        "queue": "bureau-b.activities", "since": "2000-01-01T00:00:00Z",
        "routing_keys": ["activity.recorded.blog_post"]}, lambda *message: sent.append(message))
    assert outcome["republished"] == 3 and outcome["complete"]
    assert [message[3]["message_id"] for message in sent] == recorded
    assert [message[2]["cloudEvents:id"] for message in sent] == recorded
    assert {message[0] for message in sent} == {"bureau-b.activities"}
    with pytest.raises(Forbidden):
        replay.replay(session, Scope(BUREAU, "school", MASTER_SCHOOL, "write"),
                      {"queue": "q", "since": "2000-01-01T00:00:00Z"}, lambda *message: None)
    with pytest.raises(InvalidInput, match="routing_keys"):
        replay.replay(session, bureau_scope, {"queue": "q", "since": "2000-01-01T00:00:00Z",
                                              "routing_keys": ["activity..x"]}, lambda *message: None)
