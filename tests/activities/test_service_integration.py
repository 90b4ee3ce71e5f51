"""The activities service over the real RabbitMQ and PostgreSQL: outbox, idempotency, consumers, replay."""

from __future__ import annotations

import json
import uuid

import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import create_engine, func, select

from services.activities.exceptions import Conflict, InvalidInput
from services.activities.models import Activity, RosterTeacher
from services.activities.service import ActivitiesService
from services.common.events import event_exchange
from services.common.subscriber import DEAD_LETTER_REASON_HEADER, dead_letter_queue_name
from tests.activities.activity_fixtures import BUREAU, EAST_DISTRICT, MASTER_SCHOOL, teacher_body
from tests.activities.broker import declare_queue, drain, publish_event, wait_for

pytestmark = pytest.mark.integration

SCOPE = {"bureau_id": BUREAU, "kind": "bureau", "id": BUREAU, "access": "write", "token_id": 9}


@pytest.fixture
def activities(service_config, runner_factory):
    runner = runner_factory(service_config, ActivitiesService)
    runner.start()
    engine = create_engine(service_config["DATABASE_URL"].replace("{service}", "activities"))
    yield {"config": service_config, "uri": service_config["AMQP_URI"], "engine": engine}
    engine.dispose()


def count(engine, query) -> int:
    with engine.connect() as connection:
        return connection.execute(query).scalar_one()


def announce_teacher(env, teacher_id: int, **kwargs) -> None:
    """As accounts would: a `teacher.joined` event; waits until activities has applied it."""
    publish_event(env["uri"], "accounts", "teacher.joined",
                  teacher_body(teacher_id, MASTER_SCHOOL, EAST_DISTRICT, **kwargs))
    wait_for(lambda: count(env["engine"], select(func.count()).where(RosterTeacher.id == teacher_id)),
             what=f"teacher {teacher_id} in the roster")


def new_teacher_id() -> int:
    return uuid.uuid4().int % 1_000_000_000


def blog_post(teacher_id: int, title: str = "教研随笔") -> dict:
    return {"id": str(uuid.uuid4()), "kind": "blog_post", "teacher_id": teacher_id,
            "occurred_at": "2025-03-05T20:00:00+08:00", "details": {"title": title, "word_count": 600}}


def test_recorded_activity_is_published_after_commit_with_cloud_event_headers(activities):
    teacher = new_teacher_id()
    announce_teacher(activities, teacher)
    declare_queue(activities["uri"], "bureau-test", event_exchange("activities"),
                  (f"bureau.{BUREAU}.activity.recorded.*",))
    data = blog_post(teacher)
    with ClusterRpcProxy(activities["config"]) as rpc:
        outcome = rpc.activities.record_activity(SCOPE, data)
    assert outcome["status"] == "accepted"
    [message] = drain(activities["uri"], "bureau-test", 1)
    headers = message.headers
    assert headers["cloudEvents:id"] == data["id"] == message.properties["message_id"]
    assert headers["cloudEvents:type"] == "cn.lianxiao.activities.activity.recorded.blog_post"
    assert headers["cloudEvents:source"] == "/lianxiao/activities"
    assert headers["cloudEvents:specversion"] == "1.0"
    assert message.delivery_info["routing_key"] == f"bureau.{BUREAU}.activity.recorded.blog_post"
    statement = json.loads(message.body)
    assert statement["id"] == data["id"] and statement["actor"]["account"]["name"] == f"teacher/{teacher}"


def test_rpc_idempotency_and_batch_partial_acceptance(activities):
    teacher = new_teacher_id()
    announce_teacher(activities, teacher)
    good, other = blog_post(teacher), blog_post(teacher, "第二篇")
    bad = {**blog_post(teacher), "details": {"title": "无字数"}}
    with ClusterRpcProxy(activities["config"]) as rpc:
        first = rpc.activities.record_activities(SCOPE, [good, bad, other])
        assert [result["status"] for result in first["results"]] == ["accepted", "rejected", "accepted"]
        assert "word_count" in first["results"][1]["fields"]["details"]
        again = rpc.activities.record_activities(SCOPE, [good, other])
        assert [result["status"] for result in again["results"]] == ["duplicate", "duplicate"]
        with pytest.raises(Conflict):
            rpc.activities.record_activity(SCOPE, {**good, "details": {"title": "改了", "word_count": 1}})
        with pytest.raises(InvalidInput, match="repeats"):
            rpc.activities.record_activities(SCOPE, [good, good])
        listed = rpc.activities.list_activities(SCOPE, {"teacher_id": teacher})
    assert [item["id"] for item in listed["items"]] == [good["id"], other["id"]]


def test_classroom_events_are_applied_once_per_event_id(activities):
    teacher = new_teacher_id()
    announce_teacher(activities, teacher)
    body = {"session_id": str(uuid.uuid4()), "classroom_id": 5, "school_id": MASTER_SCHOOL, "teacher_id": teacher,
            "started_at": "2025-03-06T01:00:00Z", "ended_at": "2025-03-06T01:45:00Z", "role": "master"}
    event_id = publish_event(activities["uri"], "classroom_relay", "session.ended", body)
    publish_event(activities["uri"], "classroom_relay", "session.ended", body, event_id=event_id)
    query = select(func.count()).where(Activity.teacher_id == teacher)
    wait_for(lambda: count(activities["engine"], query), what="the classroom activity")
    with ClusterRpcProxy(activities["config"]) as rpc:
        items = rpc.activities.list_activities(SCOPE, {"teacher_id": teacher})["items"]
    assert [(item["kind"], item["duration_minutes"]) for item in items] == [("classroom_session_taught", 45)]


def test_messages_that_cannot_be_processed_are_dead_lettered_with_their_reason(activities):
    uri = activities["uri"]
    publish_event(uri, "classroom_relay", "session.ended", {"session_id": "x", "role": "observer"})
    publish_event(uri, "classroom_relay", "classroom.left", None, raw=b"\xff not json")
    publish_event(uri, "accounts", "teacher.joined", teacher_body(5, MASTER_SCHOOL, None), with_id=False)
    messages = drain(uri, dead_letter_queue_name("activities"), 3, timeout=15)
    reasons = sorted(message.headers[DEAD_LETTER_REASON_HEADER] for message in messages)
    assert any(reason.startswith("InvalidInput") and "role" in reason for reason in reasons)
    assert any(reason.startswith("Undecodable body") for reason in reasons)
    assert any("cloudEvents:id" in reason for reason in reasons)
    assert {message.headers["x-lianxiao-original-exchange"] for message in messages} == {
        "classroom_relay.events", "accounts.events"}
    # The consumers are still alive after the bad messages: a good one is applied.
    announce_teacher(activities, new_teacher_id())


def test_replay_delivers_into_one_queue_what_its_bindings_select_with_the_original_ids(activities):
    teacher = new_teacher_id()
    announce_teacher(activities, teacher)
    declare_queue(activities["uri"], "live-subscriber", event_exchange("activities"), ("bureau.*.activity.#",))
    with ClusterRpcProxy(activities["config"]) as rpc:
        recorded = rpc.activities.record_activities(SCOPE, [blog_post(teacher) for _ in range(3)])
        live = drain(activities["uri"], "live-subscriber", 3)
        declare_queue(activities["uri"], "late-bureau", event_exchange("activities"),
                      (f"bureau.{BUREAU}.activity.recorded.*",))
        # The database is shared by the run's tests: replay from this test's first record on.
        since = rpc.activities.get_activity(SCOPE, recorded["results"][0]["id"])["recorded_at"]
        outcome = rpc.activities.replay_events(SCOPE, {"queue": "late-bureau", "since": since})
        with pytest.raises(Exception, match="does not exist"):
            rpc.activities.replay_events(SCOPE, {"queue": "nobody-here", "since": "2000-01-01T00:00:00Z"})
    assert outcome["republished"] == 3
    replayed = drain(activities["uri"], "late-bureau", 3)
    expected = [result["id"] for result in recorded["results"]]
    assert [message.headers["cloudEvents:id"] for message in replayed] == expected
    assert [message.headers["cloudEvents:id"] for message in live] == expected
    assert [message.delivery_info["routing_key"] for message in replayed] == [
        message.delivery_info["routing_key"] for message in live]
