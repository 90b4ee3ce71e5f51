"""The resource library over real HTTP: gunicorn → RPC → resources, with accounts and activities running.

The relay's `recording.*` events are published on `classroom_relay.events` the way its outbox does; the
alliance comes from accounts (created through the API). Every route is exercised, refusals included
(problem+json, never a 500), and a teacher's watch ends up as a lesson observation in the real activity log.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from kombu import Connection, Exchange, Queue, binding
from nameko.runners import ServiceRunner

from services.common import playback_urls
from services.common.events import event_exchange
from services.resources.service import ResourcesService
from tests.activities.broker import declare_queue, drain, publish_event, wait_for
from tests.activities.contract import contract_errors

from .gateway_support import City, bearer, running

TIMEOUT = 30
SECRET = "gateway-test-playback-secret"
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def resources(platform_config: dict[str, Any], migrate: Any, activities_service: ServiceRunner,
              gateway: str) -> Iterator[str]:
    migrate("resources")
    config = {**platform_config, "PLAYBACK_SECRET": SECRET, "PLAYBACK_URL_LIFETIME": 300,
              "WATCH_HEARTBEAT_SECONDS": 5, "OBSERVATION_MIN_SECONDS": 2}
    with running(config, ResourcesService):
        yield gateway


def call(method: str, url: str, token: str, body: Any = None, **kwargs: Any) -> requests.Response:
    for _attempt in range(20):  # the package's gateway limits each token to 10 requests/s
        response = requests.request(method, url, json=body, headers=bearer(token), timeout=TIMEOUT, **kwargs)
        if response.status_code != 429:
            return response
        time.sleep(float(response.headers.get("Retry-After", "1")))
    return response


def problem(response: requests.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith(PROBLEM), response.headers
    body = response.json()
    for word in words:
        assert word in body["detail"] or word in str(body.get("errors")), (word, body)
    return body


def signed_ok(url: str, key: str, file: str) -> bool:
    parts = urlsplit(url)
    _, media, signature, expires, url_key, url_file = parts.path.split("/", 5)
    query = parse_qs(parts.query)
    bounds = [float(query[name][0]) if name in query else None for name in ("start", "end")]
    return (media, url_key, url_file) == ("media", key, file) and playback_urls.valid(
        url_key, int(expires), signature, SECRET, time.time(), *bounds)


def recording(city: City, school: str, **extra: Any) -> dict[str, Any]:
    number = uuid.uuid4().int % 1_000_000 + 1
    started = datetime(2026, 4, 1, 1, 0, tzinfo=UTC) + timedelta(minutes=number % 10_000)
    return {
        "recording_id": number, "key": f"rec-{number}", "session_id": number, "session_kind": "dedicated_delivery",
        "title": None, "school_id": city.schools[school], "classroom_id": 9, "teacher_id": city.teachers[school],
        "subject": "物理", "grade": "八年级", "keep": True, "started_at": started.isoformat(),
        "district_id": city.districts["west" if school == "west" else "east"], **extra,
    }


def available(started: dict[str, Any], duration: float = 2400.0) -> dict[str, Any]:
    ended = datetime.fromisoformat(started["started_at"]) + timedelta(seconds=duration)
    return {**started, "ended_at": ended.isoformat(), "duration_seconds": duration,
            "tracks": [{"track": "audio", "kind": "audio", "source": "master", "codec": "opus"}],
            "files": {"hls": "index.m3u8", "courseware_hls": None, "program_mp4": "program.mp4",
                      "courseware_mp4": None}, "gaps": [], "bytes": 1_000_000}


@pytest.mark.integration
def test_the_resource_library_through_the_gateway(resources: str, city: City, platform_config: dict[str, Any],
                                                  subscriber: dict[str, Any]):
    url, uri, tokens = resources, platform_config["AMQP_URI"], city.tokens
    published = f"lxt-published-{uuid.uuid4().hex[:6]}"
    declare_queue(uri, published, event_exchange("resources"), (f"bureau.{city.bureau_id}.resource.published",))

    # An alliance of 青山一中 (east) and 西岭中学 (west), made in accounts; resources learns it from its events.
    alliance = call("POST", f"{url}/v1/alliances", tokens["bureau_write"], {
        "bureau_id": city.bureau_id, "name": f"物理联校{uuid.uuid4().hex[:4]}",
        "lead_school_id": city.schools["east_one"], "member_school_ids": [city.schools["west"]]})
    assert alliance.status_code == 201, alliance.text

    # A live lesson in the west: the bureau patrols it, the east district does not see it.
    live = recording(city, "west")
    publish_event(uri, "classroom_relay", "recording.started", live, bureau_id=city.bureau_id)
    patrol = wait_for(lambda: [
        item for item in call("GET", f"{url}/v1/patrol/sessions", tokens["bureau_read"]).json()["items"]
        if item["session_id"] == live["session_id"]], 20, "the live recording", interval=0.3)
    assert patrol[0]["recording_key"] == live["key"] and signed_ok(patrol[0]["live_url"], live["key"], "index.m3u8")
    east_patrol = call("GET", f"{url}/v1/patrol/sessions", tokens["east_read"])
    assert east_patrol.status_code == 200 and east_patrol.headers["Cache-Control"] == "no-store"
    assert live["session_id"] not in [item["session_id"] for item in east_patrol.json()["items"]]
    supervision = call("POST", f"{url}/v1/watches", tokens["bureau_read"],
                       {"target_kind": "live_session", "target_id": live["session_id"]})
    assert supervision.status_code == 201, supervision.text
    assert call("POST", f"{url}/v1/watches/{supervision.json()['id']}/end", tokens["bureau_read"]).status_code == 204

    # The lesson ends and becomes a resource; one more from 青山一中.
    publish_event(uri, "classroom_relay", "recording.ended", {**live, "ended_at": live["started_at"],
                                                              "state": "finalizing"}, bureau_id=city.bureau_id)
    west_body, east_body = available(live), available(recording(city, "east_one"), duration=1800.0)
    for body in (west_body, east_body):
        publish_event(uri, "classroom_relay", "recording.available", body, bureau_id=city.bureau_id)

    def listed(token: str, **params: Any) -> dict[int, dict]:
        response = call("GET", f"{url}/v1/resources", token, params={"limit": 200, **params})
        assert response.status_code == 200, response.text
        return {item["session_id"]: item for item in response.json()["items"]}

    both = wait_for(lambda: (lambda found: found if len(found) == 2 else None)(
        {sid: item for sid, item in listed(tokens["bureau_read"], subject="物理").items()
         if sid in (west_body["session_id"], east_body["session_id"])}), 20, "both resources", interval=0.3)
    west_id, east_id = both[west_body["session_id"]]["id"], both[east_body["session_id"]]["id"]
    assert both[west_body["session_id"]]["duration_seconds"] == 2400.0
    assert west_body["session_id"] not in listed(tokens["school_read"])  # not shared yet
    still_live = call("GET", f"{url}/v1/patrol/sessions", tokens["bureau_read"]).json()["items"]
    assert west_body["session_id"] not in [item["session_id"] for item in still_live]  # it ended
    other = call("GET", f"{url}/v1/resources/{west_id}", tokens["other_bureau_write"])
    problem(other, 404, "not visible")

    # Sharing it with the alliance (the bureau may; a partner school may not change it).
    refused = call("PATCH", f"{url}/v1/resources/{west_id}", tokens["school_write"], {"title": "改名"})
    problem(refused, 404)
    shared = call("PATCH", f"{url}/v1/resources/{west_id}", tokens["bureau_write"],
                  {"shared": True, "title": "浮力", "kept": True})
    assert shared.status_code == 200 and shared.json()["shared"] is True and shared.json()["title"] == "浮力"
    wait_for(lambda: west_body["session_id"] in listed(tokens["school_read"]), 20, "the alliance partner sees it",
             interval=0.3)
    assert listed(tokens["school_read"], q="浮力").keys() == {west_body["session_id"]}
    problem(call("PATCH", f"{url}/v1/resources/{west_id}", tokens["school_write"], {"title": "改名"}), 403,
            "alliance partner")
    messages = drain(uri, published, 3)
    bodies = [json.loads(message.body) for message in messages]
    assert sorted((body["resource_id"], body["shared_with_alliance"]) for body in bodies) == sorted(
        [(west_id, False), (east_id, False), (west_id, True)])
    for message in messages:
        assert contract_errors("resources.events", message.delivery_info["routing_key"], message.headers,
                               message.body) == []

    # Clips and playback.
    clip = call("POST", f"{url}/v1/resources/{east_id}/clips", tokens["school_write"],
                {"title": "电流的方向", "start_seconds": 60, "end_seconds": 300.5})
    assert clip.status_code == 201 and clip.headers["Location"].endswith(f"/clips/{clip.json()['id']}")
    problem(call("POST", f"{url}/v1/resources/{east_id}/clips", tokens["school_write"],
                 {"title": "超出", "start_seconds": 1700, "end_seconds": 1900}), 422, "after the recording's end")
    problem(call("POST", f"{url}/v1/resources/{east_id}/clips", tokens["school_write"],
                 {"title": "倒着", "start_seconds": 300, "end_seconds": 60}), 422, "end_seconds")
    problem(call("POST", f"{url}/v1/resources/{east_id}/clips", tokens["school_read"],
                 {"title": "只读", "start_seconds": 1, "end_seconds": 2}), 403, "write token")
    problem(call("POST", f"{url}/v1/resources/2000000000/clips", tokens["school_write"],
                 {"title": "无", "start_seconds": 1, "end_seconds": 2}), 404)
    spare = call("POST", f"{url}/v1/resources/{east_id}/clips", tokens["school_write"],
                 {"title": "多余", "start_seconds": 1, "end_seconds": 2}).json()
    spare_url = f"{url}/v1/resources/{east_id}/clips/{spare['id']}"
    assert call("DELETE", spare_url, tokens["school_write"]).status_code == 204
    problem(call("DELETE", spare_url, tokens["school_write"]), 404)
    one = call("GET", f"{url}/v1/resources/{east_id}", tokens["east_read"]).json()
    assert [item["title"] for item in one["clips"]] == ["电流的方向"]
    urls = call("GET", f"{url}/v1/resources/{east_id}/playback", tokens["school_read"])
    assert urls.status_code == 200, urls.text
    body = urls.json()
    assert signed_ok(body["hls_url"], east_body["key"], "index.m3u8")
    assert signed_ok(body["mp4_url"], east_body["key"], "program.mp4") and body["courseware_url"] is None
    assert signed_ok(body["clips"][0]["url"], east_body["key"], "program.mp4")
    assert "start=60&end=300.5" in body["clips"][0]["url"]

    # Retention: a bureau write token only.
    problem(call("PUT", f"{url}/v1/resources/retention", tokens["school_write"], {"days": 30}), 403, "bureau")
    problem(call("PUT", f"{url}/v1/resources/retention", tokens["bureau_write"], {"days": 0}), 422, "days")
    assert call("PUT", f"{url}/v1/resources/retention", tokens["bureau_write"], {"days": 90}).json()["days"] == 90
    assert call("GET", f"{url}/v1/resources/retention", tokens["east_read"]).json() == {
        "bureau_id": city.bureau_id, "days": 90, "default": False}

    # Bad input is a problem, never a 500.
    problem(call("GET", f"{url}/v1/resources", tokens["bureau_read"], params={"limit": 0}), 422, "limit")
    problem(call("GET", f"{url}/v1/resources", tokens["bureau_read"],
                 params={"from": "2026-05-01", "to": "2026-04-01"}), 422, "from")
    problem(call("GET", f"{url}/v1/resources", tokens["bureau_read"], params={"owner": "x"}), 422, "owner")
    problem(call("GET", f"{url}/v1/resources/2000000000", tokens["bureau_read"]), 404)
    problem(call("GET", f"{url}/v1/resources/2000000000/playback", tokens["bureau_read"]), 404)
    problem(requests.patch(f"{url}/v1/resources/{east_id}", data=b"{title", timeout=TIMEOUT,
                           headers={**bearer(tokens["school_write"]), "Content-Type": "application/json"}), 400, "JSON")
    problem(call("PATCH", f"{url}/v1/resources/{east_id}", tokens["school_write"], {}), 422)
    problem(call("PATCH", f"{url}/v1/resources/{east_id}", tokens["school_write"], {"shared": "yes"}), 422, "shared")
    problem(call("POST", f"{url}/v1/watches", tokens["school_write"], {"target_kind": "tv", "target_id": 1}), 422)
    problem(call("POST", f"{url}/v1/watches/{uuid.uuid4()}/heartbeat", tokens["school_write"],
                 {"seconds_watched": 1}), 404, "Watch")
    problem(call("POST", f"{url}/v1/watches/not-a-uuid/end", tokens["school_write"]), 404)
    problem(requests.get(f"{url}/v1/resources", timeout=TIMEOUT), 401)

    # A teacher of 青山一中 watches the shared lesson from the west: a lesson observation in the activity log.
    observer = city.teachers["east_one"]
    watch = call("POST", f"{url}/v1/watches", tokens["school_write"],
                 {"target_kind": "resource", "target_id": west_id, "viewer_teacher_id": observer})
    assert watch.status_code == 201, watch.text
    watch_id = watch.json()["id"]
    assert watch.json()["heartbeat_seconds"] == 5
    time.sleep(2.5)
    beat = call("POST", f"{url}/v1/watches/{watch_id}/heartbeat", tokens["school_write"], {"seconds_watched": 600})
    assert beat.status_code == 204, beat.text
    assert call("POST", f"{url}/v1/watches/{watch_id}/end", tokens["school_write"]).status_code == 204
    assert call("POST", f"{url}/v1/watches/{watch_id}/end", tokens["school_write"]).status_code == 204  # a retry
    problem(call("POST", f"{url}/v1/watches/{watch_id}/heartbeat", tokens["school_write"],
                 {"seconds_watched": 1}), 409, "start a new one")
    problem(call("POST", f"{url}/v1/watches/{watch_id}/end", tokens["east_read"]), 404)
    record = next(item for item in call("GET", f"{url}/v1/watches", tokens["school_read"]).json()["items"]
                  if item["id"] == watch_id)
    assert record["counted_as"] == "lesson_observation" and record["activity_state"] == "recorded"
    assert 2.4 <= record["seconds_watched"] < 10  # credited the wall time, not the 600 s claimed
    activities = call("GET", f"{url}/v1/activities", tokens["school_read"],
                      params={"teacher_id": observer, "kind": "lesson_observation"}).json()["items"]
    observed = [item for item in activities if item["id"] == record["activity_id"]]
    assert observed, activities
    assert observed[0]["details"]["observed_teacher_id"] == city.teachers["west"]
    assert observed[0]["details"]["lesson"] == {"subject": "物理", "grade": "八年级", "title": "浮力"}
    patrol_record = call("GET", f"{url}/v1/watches", tokens["bureau_read"], params={"target_kind": "live_session"})
    assert any(item["id"] == supervision.json()["id"] and item["counted_as"] == "supervision"
               for item in patrol_record.json()["items"])

    # Another bureau's subscriber may bind its own queue to resources.events (its bureau only) and have the
    # library's events replayed into it.
    library_queue = f"{subscriber['user']}.library"
    library = Exchange("resources.events", type="topic", durable=True, no_declare=True)  # the platform's own
    with Connection(subscriber["uri"]) as connection:
        Queue(library_queue, bindings=[binding(library, routing_key=f"bureau.{city.bureau_id}.resource.published")],
              durable=True, channel=connection.channel()).declare()
    replayed = call("POST", f"{url}/v1/events/replay", tokens["bureau_read"], {
        "queue": library_queue, "since": "2000-01-01T00:00:00Z", "exchanges": ["resources.events"]})
    assert replayed.status_code == 200, replayed.text
    republished = replayed.json()["exchanges"][0]["republished"]
    assert republished >= 3
    # Every one replayed: other tests of the package may have published into the same bureau before this one.
    again = [json.loads(message.body) for message in drain(uri, library_queue, republished)]
    assert {(body["resource_id"], body["shared_with_alliance"]) for body in again} >= {
        (west_id, False), (west_id, True), (east_id, False)}
