"""Unit tests of the xAPI statement query and of replay's selection (SQLite, publishing captured)."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import update

from services.activities import log, moderation, replay, xapi
from services.activities.exceptions import Forbidden, InvalidInput, NotFound
from services.activities.models import outbox
from services.common.scope import Scope
from tests.activities.activity_fixtures import BUREAU, MASTER_SCHOOL


def post(teacher_id: int, title: str = "教学反思") -> dict:
    return {"id": str(uuid.uuid4()), "kind": "blog_post", "teacher_id": teacher_id,
            "occurred_at": "2025-03-05T20:00:00+08:00", "details": {"title": title, "word_count": 800}}


def teacher_agent(teacher_id: int) -> str:
    return json.dumps({"account": {"homePage": xapi.HOME_PAGE, "name": f"teacher/{teacher_id}"}})


def test_statements_filter_by_agent_verb_and_activity(session, bureau_scope):
    first = log.record(session, bureau_scope, post(1))["activity"]
    log.record(session, bureau_scope, post(2))
    comment = log.record(session, bureau_scope, {
        "kind": "comment", "teacher_id": 3, "occurred_at": "2025-03-05T21:00:00+08:00",
        "details": {"on_activity_id": first["id"], "text": "写得好"}})["activity"]
    by_agent = xapi.query_statements(session, bureau_scope, {"agent": teacher_agent(1)})["statements"]
    assert [statement["id"] for statement in by_agent] == [first["id"]]
    by_verb = xapi.query_statements(session, bureau_scope, {"verb": "http://adlnet.gov/expapi/verbs/commented"})
    assert [statement["id"] for statement in by_verb["statements"]] == [comment["id"]]
    about_post = xapi.query_statements(session, bureau_scope, {"activity": xapi.ACTIVITY_BASE + first["id"]})
    assert {statement["id"] for statement in about_post["statements"]} == {first["id"], comment["id"]}
    stranger = json.dumps({"mbox": "mailto:someone@example.org"})
    assert xapi.query_statements(session, bureau_scope, {"agent": stranger})["statements"] == []
    with pytest.raises(InvalidInput, match="agent"):
        xapi.query_statements(session, bureau_scope, {"agent": "{not json"})


def test_statements_page_newest_first_unless_ascending(session, bureau_scope):
    ids = [log.record(session, bureau_scope, post(1 + index % 2))["activity"]["id"] for index in range(5)]
    page = xapi.query_statements(session, bureau_scope, {"limit": 2})
    assert [statement["id"] for statement in page["statements"]] == ids[:-3:-1]
    assert page["more"].startswith("/xapi/statements?") and "cursor=" in page["more"]
    collected = []
    params: dict = {"limit": "2", "ascending": "true"}
    while True:
        result = xapi.query_statements(session, bureau_scope, params)
        collected += [statement["id"] for statement in result["statements"]]
        if not result["more"]:
            break
        params = dict(pair.split("=", 1) for pair in result["more"].split("?", 1)[1].split("&"))
    assert collected == ids


def test_hidden_statements_are_left_out_like_voided_ones(session, bureau_scope):
    target = log.record(session, bureau_scope, post(1))["activity"]
    comment = log.record(session, bureau_scope, {
        "kind": "comment", "teacher_id": 1, "occurred_at": "2025-03-05T21:00:00+08:00",
        "details": {"on_activity_id": target["id"], "text": "广告"}})["activity"]
    moderation.hide(session, bureau_scope, comment["id"], {"moderator_id": 2, "reason": "广告"})
    ids = [statement["id"] for statement in xapi.query_statements(session, bureau_scope, {})["statements"]]
    assert ids == [target["id"]]
    with pytest.raises(NotFound):
        xapi.query_statements(session, bureau_scope, {"statementId": comment["id"]})


def test_a_school_scope_reads_only_its_school(session, bureau_scope, master_scope):
    log.record(session, bureau_scope, post(1))
    log.record(session, bureau_scope, post(3))
    statements = xapi.query_statements(session, master_scope, {})["statements"]
    school_key = xapi.extension("school")
    assert [statement["context"]["extensions"][school_key] for statement in statements] == [MASTER_SCHOOL]


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
