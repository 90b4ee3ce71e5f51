"""The example subscriber, run as a bureau would run it, against the real broker and service."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kombu import Connection
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import create_engine, func, select

from services.activities.models import RosterTeacher
from services.activities.service import ActivitiesService
from tests.activities.activity_fixtures import BUREAU, EAST_DISTRICT, MASTER_SCHOOL, teacher_body
from tests.activities.broker import publish_event, wait_for

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "bureau_subscriber.py"
SCOPE = {"bureau_id": BUREAU, "kind": "bureau", "id": BUREAU, "access": "write"}


def queue_exists(uri: str, name: str) -> bool:
    with Connection(uri) as connection:
        try:
            connection.channel().queue_declare(queue=name, passive=True)
        except Exception:  # amqp's NotFound closes the channel: the queue is not there yet
            return False
    return True


def test_the_example_subscriber_prints_each_event_once_despite_a_replay(service_config, runner_factory, tmp_path):
    uri = service_config["AMQP_URI"]
    runner_factory(service_config, ActivitiesService).start()
    teacher = uuid.uuid4().int % 1_000_000_000
    publish_event(uri, "accounts", "teacher.joined", teacher_body(teacher, MASTER_SCHOOL, EAST_DISTRICT))
    engine = create_engine(service_config["DATABASE_URL"].replace("{service}", "activities"))
    with engine.connect() as connection:
        wait_for(lambda: connection.execute(select(func.count()).where(RosterTeacher.id == teacher)).scalar_one(),
                 what="the teacher in the roster")
    engine.dispose()

    queue = "bureau-b.activities"
    subscriber = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--amqp-uri", uri, "--queue", queue, "--bind", "activity.recorded.*",
         "--seen-db", str(tmp_path / "seen.sqlite3"), "--max-messages", "4", "--idle-exit", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(lambda: queue_exists(uri, queue), what="the subscriber's queue")
        posts = [{"id": str(uuid.uuid4()), "kind": "blog_post", "teacher_id": teacher,
                  "occurred_at": "2025-03-05T20:00:00+08:00", "details": {"title": f"随笔{n}", "word_count": 300}}
                 for n in range(2)]
        with ClusterRpcProxy(service_config) as rpc:
            rpc.activities.record_activities(SCOPE, posts)
            since = rpc.activities.get_activity(SCOPE, posts[0]["id"])["recorded_at"]
            wait_for(lambda: rpc.activities.replay_events(SCOPE, {
                "queue": queue, "since": since, "routing_keys": ["activity.recorded.*"]})["republished"] == 2,
                what="both events to be published before the replay")
        stdout, stderr = subscriber.communicate(timeout=20)
    finally:
        if subscriber.poll() is None:
            subscriber.kill()
    assert subscriber.returncode == 0, stderr
    printed = [json.loads(line) for line in stdout.splitlines()]
    assert [event["id"] for event in printed] == [post["id"] for post in posts]
    assert printed[0]["statement"]["verb"]["id"] == "http://activitystrea.ms/schema/1.0/author"
    assert printed[0]["routing_key"] == "activity.recorded.blog_post"
