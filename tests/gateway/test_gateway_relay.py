"""Live classrooms over real HTTP: gunicorn → RPC → classroom_relay → a real data plane process.

A live lesson as a school's software sees it: register classrooms, schedule and start a
lesson, fetch a branch's SDP, and see a branch refused with 409 and the numbers when the master
school's 100 Mbit/s link would be exceeded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from nameko.runners import ServiceRunner
from sqlalchemy import text

from services.classroom_relay.service import ClassroomRelayService
from services.common.db import make_engine
from tests.relay.relay_harness import DataPlane, start_dataplane

from .gateway_support import City, bearer

TIMEOUT = 30
MBIT = 1_000_000


@pytest.fixture(scope="module")
def relay(gateway: str, platform_config: dict[str, Any], migrate: Any) -> Iterator[tuple[str, DataPlane]]:
    migrate("classroom_relay")
    plane = start_dataplane()
    runner = ServiceRunner({
        **platform_config, "METRICS_PORT": 0, "RELAY_ALLOW_DEV_SECRET": "1",
        "RELAY_CONTROL_ADDRESS": f"127.0.0.1:{plane.control_port}", "RELAY_CONTROL_SECRET": plane.control_secret,
    })
    runner.add_service(ClassroomRelayService)
    runner.start()
    try:
        yield gateway, plane
    finally:
        runner.kill()
        assert "Traceback" not in plane.stop()


def call(method: str, url: str, token: str, body: Any = None) -> requests.Response:
    return requests.request(method, url, json=body, headers=bearer(token), timeout=TIMEOUT)


def branch_sdp(url: str, token: str, seconds: float = 10.0) -> requests.Response:
    """The SDP, once the relay has confirmed the branch's stream (503 until its next stats pull)."""
    deadline = time.monotonic() + seconds
    while True:
        response = call("GET", url, token)
        if response.status_code != 503 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response
        time.sleep(0.1)


def set_school_links(platform_config: dict[str, Any], links: dict[int, int]) -> None:
    """The schools' links as the bureau registered them in accounts (which owns schools)."""
    engine = make_engine(platform_config["DATABASE_URL"].replace("{service}", "accounts"))
    with engine.begin() as connection:
        for school_id, bps in links.items():
            connection.execute(text("UPDATE schools SET link_capacity_bps = :bps WHERE id = :id"),
                               {"bps": bps, "id": school_id})
    engine.dispose()


def test_a_lesson_from_classrooms_to_sdp_and_a_refused_branch(
    relay: tuple[str, DataPlane], city: City, platform_config: dict[str, Any]
) -> None:
    gateway, _plane = relay
    token = city.tokens["bureau_write"]
    master_school, branch_school = city.schools["east_one"], city.schools["east_two"]
    set_school_links(platform_config, {master_school: 100 * MBIT, branch_school: 200 * MBIT})

    def classroom(school_id: int, name: str, kind: str, **extra: Any) -> dict:
        response = call("POST", f"{gateway}/v1/classrooms", token, {
            "school_id": school_id, "name": name, "kind": kind, **extra,
        })
        assert response.status_code == 201, response.text
        return response.json()

    # Accounts' facts, not the body's: another bureau's school and one that does not exist answer alike.
    for school_id in (city.schools["elsewhere"], 2_000_000_000):
        stranger = call("POST", f"{gateway}/v1/classrooms", token,
                        {"school_id": school_id, "name": "冒名教室", "kind": "receiving"})
        assert stranger.status_code == 404, stranger.text
        assert stranger.json()["detail"] == (f"School {school_id} does not exist or is outside this token's "
                                             f"scope (bureau {city.bureau_id}).")
    inflated = call("POST", f"{gateway}/v1/classrooms", token, {
        "school_id": master_school, "name": "虚报带宽", "kind": "broadcasting",
        "school_link_capacity_bps": 10_000 * MBIT})
    assert inflated.status_code == 422 and "school_link_capacity_bps" in inflated.text

    master = classroom(master_school, "录播教室一", "broadcasting", receive_host="127.0.0.1", receive_port=43100)
    assert master["school_link_capacity_bps"] == 100 * MBIT and master["district_id"] == city.districts["east"]
    branches = [
        classroom(branch_school, f"接收教室{index}", "receiving",
                  downlink_capacity_bps=50 * MBIT, receive_host="127.0.0.1", receive_port=43000 + 8 * index)
        for index in (1, 2, 3)
    ]
    duplicate = call("POST", f"{gateway}/v1/classrooms", token, {
        "school_id": master_school, "bureau_id": city.bureau_id, "name": "录播教室一", "kind": "broadcasting"})
    assert duplicate.status_code == 409, duplicate.text

    now = datetime.now(UTC)
    created = call("POST", f"{gateway}/v1/sessions", token, {
        "kind": "master_teacher", "title": "七年级语文", "master_classroom_id": master["id"],
        "starts_at": now.isoformat(), "ends_at": (now + timedelta(minutes=40)).isoformat(),
        "branch_bps": 40 * MBIT, "branch_classroom_ids": [branches[0]["id"], branches[1]["id"]],
        "interactive": True, "teacher_id": city.teachers["east_one"],
    })
    assert created.status_code == 201, created.text
    lesson = created.json()["id"]
    members = created.json()["classrooms"]
    assert [track["label"] for track in members[0]["tracks"]] == [f"classroom-{master['id']}/audio",
                                                                   f"classroom-{master['id']}/camera"]
    assert [track["track"] for track in members[1]["tracks"]] == ["audio", "camera"]  # interactive: speaks back
    borrowed = call("POST", f"{gateway}/v1/sessions", token, {
        "kind": "master_teacher", "title": "借来的老师", "master_classroom_id": master["id"],
        "starts_at": now.isoformat(), "ends_at": (now + timedelta(minutes=40)).isoformat(),
        "teacher_id": city.teachers["elsewhere"]})
    assert borrowed.status_code == 404, borrowed.text
    started = call("POST", f"{gateway}/v1/sessions/{lesson}/start", token)
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "live"

    refused = call("PUT", f"{gateway}/v1/sessions/{lesson}/classrooms/{branches[2]['id']}", token, {})
    assert refused.status_code == 409, refused.text
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    problem = refused.json()
    assert "100.0 Mbit/s" in problem["detail"]

    sdp = branch_sdp(f"{gateway}/v1/sessions/{lesson}/classrooms/{branches[0]['id']}/sdp", token)
    assert sdp.headers["Content-Type"].startswith("application/sdp")
    assert "m=audio 43008 RTP/AVP 97" in sdp.text and "m=video 43010 RTP/AVP 96" in sdp.text
    assert f"a=label:classroom-{master['id']}/camera" in sdp.text
    # The master's SDP: each branch's voice and camera on its own ports, labelled.
    master_sdp = branch_sdp(f"{gateway}/v1/sessions/{lesson}/classrooms/{master['id']}/sdp", token)
    labels = [line.split(":", 1)[1] for line in master_sdp.text.splitlines() if line.startswith("a=label:")]
    assert labels == [f"classroom-{room['id']}/{track}" for room in branches[:2] for track in ("audio", "camera")]

    # Recording (录播) is on for a master-teacher lesson; switching it is checked at the door and by the relay.
    assert started.json()["record"] is True
    recording_url = f"{gateway}/v1/sessions/{lesson}/recording"
    for body in ({}, {"record": "no"}, {"record": False, "keep": True}, [False]):
        bad = call("PUT", recording_url, token, body)
        assert bad.status_code == 422, (body, bad.text)
        assert bad.headers["Content-Type"].startswith("application/problem+json") and bad.json()["detail"]
    not_json = requests.put(recording_url, data="record=0", timeout=TIMEOUT,
                            headers={**bearer(token), "Content-Type": "application/json"})
    assert not_json.status_code == 400 and not_json.headers["Content-Type"].startswith("application/problem+json")
    missing = call("PUT", f"{gateway}/v1/sessions/2000000000/recording", token, {"record": False})
    assert missing.status_code == 404 and missing.headers["Content-Type"].startswith("application/problem+json")
    # Another bureau's token: like a missing session; a read token of the master's own school: a 403.
    foreign = call("PUT", recording_url, city.tokens["other_bureau_write"], {"record": False})
    assert foreign.status_code == 404 and foreign.json()["detail"] == f"Session {lesson} does not exist."
    read_only = call("PUT", recording_url, city.tokens["school_read"], {"record": False})
    assert read_only.status_code == 403 and read_only.headers["Content-Type"].startswith("application/problem+json")
    assert call("GET", f"{gateway}/v1/sessions/{lesson}", token).json()["record"] is True  # neither changed it
    switched = call("PUT", recording_url, token, {"record": False})
    assert switched.status_code == 200, switched.text
    assert switched.json()["record"] is False and switched.json()["recording"] is None  # no recorder here

    other_school = call("GET", f"{gateway}/v1/sessions/{lesson}", city.tokens["other_bureau_write"])
    assert other_school.status_code in (403, 404), other_school.text
    ended = call("POST", f"{gateway}/v1/sessions/{lesson}/end", token)
    assert ended.status_code == 200, ended.text
