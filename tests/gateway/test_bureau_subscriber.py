"""examples/bureau_subscriber.py run as a bureau would run it: its restricted broker user, its own queue,
a replay through the gateway on start, the live stream after it, each event printed once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
from nameko.runners import ServiceRunner

from tests.activities.every_kind import activity_of

from .gateway_support import REPO_ROOT, City, bearer

SCRIPT = REPO_ROOT / "examples" / "bureau_subscriber.py"
TIMEOUT = 30


def record(gateway: str, city: City, kind: str) -> str:
    item = activity_of(kind, city.teachers["east_one"], city.teachers["east_one"], "")
    answer = requests.post(f"{gateway}/v1/activities", json=item, headers=bearer(city.tokens["bureau_write"]),
                           timeout=TIMEOUT)
    assert answer.status_code == 201, answer.text
    return item["id"]


def start(subscriber: dict[str, Any], city: City, gateway: str, seen_db: Path, since: str,
          max_messages: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--amqp-uri", subscriber["uri"], "--bureau", str(city.bureau_id),
         "--queue", f"{subscriber['user']}.example", "--bind", "activity.recorded.*",
         "--gateway", gateway, "--token", city.tokens["bureau_read"], "--replay-since", since,
         "--seen-db", str(seen_db), "--max-messages", str(max_messages), "--idle-exit", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_example_subscriber_replays_then_follows_the_live_stream_printing_each_event_once(
        gateway: str, city: City, subscriber: dict[str, Any], activities_service: ServiceRunner,
        tmp_path: Path) -> None:
    before = [record(gateway, city, "blog_post"), record(gateway, city, "training")]  # before the queue exists
    since = requests.get(f"{gateway}/v1/activities/{before[0]}", headers=bearer(city.tokens["bureau_read"]),
                         timeout=TIMEOUT).json()["recorded_at"]
    seen_db = tmp_path / "seen.sqlite3"
    first = start(subscriber, city, gateway, seen_db, since, max_messages=3)
    try:
        assert first.stderr is not None
        replayed = json.loads(first.stderr.readline())  # the queue is bound and the replay done
        live = record(gateway, city, "lecture")
        stdout, stderr = first.communicate(timeout=40)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    printed = [json.loads(line) for line in stdout.splitlines()]
    assert [event["id"] for event in printed] == [*before, live]
    assert printed[0]["routing_key"] == f"bureau.{city.bureau_id}.activity.recorded.blog_post"
    assert printed[0]["event_type"] == "activity.recorded.blog_post"
    assert printed[0]["statement"]["verb"]["id"] == "http://activitystrea.ms/schema/1.0/author"
    assert replayed["replay"]["republished"] == 2

    # Run again with the same memory: the replay delivers the three again, nothing is printed twice.
    again = start(subscriber, city, gateway, seen_db, since, max_messages=3)
    stdout, stderr = again.communicate(timeout=40)
    assert again.returncode == 0, stderr
    assert stdout == "" and json.loads(stderr.splitlines()[0])["replay"]["republished"] == 3
