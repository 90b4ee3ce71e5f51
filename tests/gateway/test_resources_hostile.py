"""The resource library attacked over real HTTP, as a hostile tenant would (issue 16's independent checks).

gunicorn → RPC → the resources service, with accounts running; resources come from `recording.available`
events published as the relay's outbox does. Every refusal is application/problem+json with a detail; another
scope's resource answers exactly like a missing one (404, same words); nothing accepted before is lost.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from nameko.runners import ServiceRunner

from services.resources.service import ResourcesService
from tests.activities.broker import wait_for

from .gateway_support import City, bearer, running
from .test_gateway_resources import PROBLEM, SECRET, TIMEOUT, available, call, problem, recording

MISSING = 2_000_000_000


@pytest.fixture(scope="module")
def library(platform_config: dict[str, Any], migrate: Any, activities_service: ServiceRunner,
            gateway: str) -> Iterator[str]:
    migrate("resources")
    config = {**platform_config, "PLAYBACK_SECRET": SECRET, "PLAYBACK_URL_LIFETIME": 300,
              "WATCH_HEARTBEAT_SECONDS": 5, "OBSERVATION_MIN_SECONDS": 2}
    with running(config, ResourcesService):
        yield gateway


def not_found_like_missing(response: requests.Response, resource_id: int) -> None:
    """404 whose words are those of a resource that does not exist (existence is not leaked)."""
    body = problem(response, 404)
    assert str(resource_id) in body["detail"] and "does not exist or is not visible" in body["detail"], body


def publish_resources(city: City, uri: str, url: str, *bodies: tuple[dict[str, Any], int]) -> dict[int, int]:
    """Publish `recording.available` bodies (with their bureau) and wait for the resources: session → id."""
    from tests.activities.broker import publish_event

    for body, bureau in bodies:
        publish_event(uri, "classroom_relay", "recording.available", body, bureau_id=bureau)
    wanted = {body["session_id"]: (body, bureau) for body, bureau in bodies}
    found: dict[int, int] = {}

    def all_there() -> bool:
        for session_id, (_body, bureau) in wanted.items():
            if session_id in found:
                continue
            token = city.tokens["bureau_read" if bureau == city.bureau_id else "other_bureau_write"]
            items = call("GET", f"{url}/v1/resources", token, params={"limit": 200}).json()["items"]
            for item in items:
                if item["session_id"] == session_id:
                    found[session_id] = item["id"]
        return len(found) == len(wanted)

    wait_for(all_there, 20.0, "the resources", interval=0.3)
    return found


@pytest.mark.integration
def test_a_hostile_tenant_gets_clear_refusals_and_no_one_elses_resources(
        library: str, city: City, platform_config: dict[str, Any]):
    url, uri, tokens = library, platform_config["AMQP_URI"], city.tokens
    own = available(recording(city, "east_one"), duration=600.0)
    neighbour = available(recording(city, "east_two"), duration=600.0)
    west = available(recording(city, "west"), duration=600.0)
    foreign = available({**recording(city, "east_one"), "school_id": city.schools["elsewhere"],
                         "teacher_id": city.teachers["elsewhere"], "district_id": None}, duration=600.0)
    ids = publish_resources(city, uri, url, (own, city.bureau_id), (neighbour, city.bureau_id),
                            (west, city.bureau_id), (foreign, city.other_bureau_id))
    own_id, neighbour_id, west_id, foreign_id = (ids[body["session_id"]] for body in (own, neighbour, west, foreign))

    # Another bureau's resource and another school's unshared one: exactly like a missing one, on every route.
    school = tokens["school_write"]
    for target in (foreign_id, neighbour_id, MISSING):
        not_found_like_missing(call("GET", f"{url}/v1/resources/{target}", school), target)
        not_found_like_missing(call("PATCH", f"{url}/v1/resources/{target}", school, {"title": "偷改"}), target)
        not_found_like_missing(call("POST", f"{url}/v1/resources/{target}/clips", school,
                                    {"title": "偷剪", "start_seconds": 1, "end_seconds": 2}), target)
        not_found_like_missing(call("DELETE", f"{url}/v1/resources/{target}/clips/1", school), target)
        not_found_like_missing(call("GET", f"{url}/v1/resources/{target}/playback", school), target)
        problem(call("POST", f"{url}/v1/watches", school, {"target_kind": "resource", "target_id": target}), 404)
    # The other bureau's own token cannot reach this bureau's; a district token not outside its district.
    not_found_like_missing(call("GET", f"{url}/v1/resources/{own_id}/playback", tokens["other_bureau_write"]), own_id)
    not_found_like_missing(call("PATCH", f"{url}/v1/resources/{own_id}", tokens["other_bureau_write"],
                                {"kept": True}), own_id)
    not_found_like_missing(call("GET", f"{url}/v1/resources/{west_id}", tokens["east_read"]), west_id)
    not_found_like_missing(call("GET", f"{url}/v1/resources/{foreign_id}", tokens["bureau_write"]), foreign_id)
    assert call("GET", f"{url}/v1/resources/{neighbour_id}", tokens["east_read"]).status_code == 200
    # Filtering by another bureau's school finds nothing (and says nothing about it).
    for token, school_id in ((school, city.schools["elsewhere"]), (tokens["east_read"], city.schools["west"])):
        found = call("GET", f"{url}/v1/resources", token, params={"school_id": school_id})
        assert found.status_code == 200 and found.json() == {"items": [], "total": 0}, found.text

    # Read-only tokens write nothing.
    for method, path, body in (("PATCH", f"/v1/resources/{own_id}", {"title": "只读"}),
                               ("POST", f"/v1/resources/{own_id}/clips",
                                {"title": "只读", "start_seconds": 1, "end_seconds": 2}),
                               ("DELETE", f"/v1/resources/{own_id}/clips/1", None),
                               ("PUT", "/v1/resources/retention", {"days": 30})):
        for token in ("school_read", "east_read", "bureau_read"):
            if token != "bureau_read" or path.endswith("retention"):
                problem(call(method, f"{url}{path}", tokens[token], body), 403)

    # Alliance partners look but do not touch.
    made = call("POST", f"{url}/v1/alliances", tokens["bureau_write"], {
        "bureau_id": city.bureau_id, "name": f"柳湾联校{uuid.uuid4().hex[:4]}",
        "lead_school_id": city.schools["east_two"], "member_school_ids": [city.schools["east_one"]]})
    assert made.status_code == 201, made.text
    shared = call("PATCH", f"{url}/v1/resources/{neighbour_id}", tokens["bureau_write"], {"shared": True})
    assert shared.status_code == 200 and shared.json()["shared"] is True
    wait_for(lambda: call("GET", f"{url}/v1/resources/{neighbour_id}", school).status_code == 200,
             20.0, "the partner sees it", interval=0.3)
    assert call("GET", f"{url}/v1/resources/{neighbour_id}/playback", school).status_code == 200
    for method, path, body in (("PATCH", "", {"title": "伙伴改名"}), ("PATCH", "", {"shared": False}),
                               ("PATCH", "", {"kept": True}),
                               ("POST", "/clips", {"title": "伙伴剪辑", "start_seconds": 1, "end_seconds": 2}),
                               ("DELETE", "/clips/1", None)):
        problem(call(method, f"{url}/v1/resources/{neighbour_id}{path}", school, body), 403, "alliance partner")
    unchanged = call("GET", f"{url}/v1/resources/{neighbour_id}", tokens["bureau_read"]).json()
    assert unchanged["shared"] is True and unchanged["kept"] is False and unchanged["clips"] == []

    # Clip bounds: every bad one a 422 naming the field (or a 400 for JSON that is not JSON); nothing stored.
    clips = f"{url}/v1/resources/{own_id}/clips"
    for body, field in (
            ({"title": "负", "start_seconds": -1, "end_seconds": 2}, "start_seconds"),
            ({"title": "字", "start_seconds": "1", "end_seconds": 2}, "start_seconds"),
            ({"title": "真", "start_seconds": True, "end_seconds": 2}, "start_seconds"),
            ({"title": "同", "start_seconds": 5, "end_seconds": 5}, "end_seconds"),
            ({"title": "倒", "start_seconds": 9, "end_seconds": 5}, "end_seconds"),
            ({"title": "长", "start_seconds": 1, "end_seconds": 601}, "end_seconds"),
            ({"title": "远", "start_seconds": 1, "end_seconds": 1e308}, "end_seconds"),
            ({"title": "短", "start_seconds": 599.9999, "end_seconds": 600}, "at least"),  # signed as 600-600
            ({"title": "零", "start_seconds": 0, "end_seconds": 5e-324}, "at least"),
            ({"title": "", "start_seconds": 1, "end_seconds": 2}, "title"),
            ({"title": "   ", "start_seconds": 1, "end_seconds": 2}, "title"),
            ({"title": "题" * 201, "start_seconds": 1, "end_seconds": 2}, "title"),
            ({"title": "x" * 100_000, "start_seconds": 1, "end_seconds": 2}, "title"),
            ({"title": "零\u0000", "start_seconds": 1, "end_seconds": 2}, "title"),
            ({"title": "多", "start_seconds": 1, "end_seconds": 2, "owner": 1}, "owner"),
            ({"start_seconds": 1, "end_seconds": 2}, "title")):
        problem(call("POST", clips, school, body), 422, field)
    for raw in (b'{"title": "n", "start_seconds": NaN, "end_seconds": 2}',
                b'{"title": "i", "start_seconds": 1, "end_seconds": Infinity}',
                b'{"title": "b", "start_seconds": 1, "end_seconds": 1' + b"0" * 5000 + b"}", b"[" * 100_000):
        response = requests.post(clips, data=raw, timeout=TIMEOUT,
                                 headers={**bearer(school), "Content-Type": "application/json"})
        assert response.status_code in (400, 413, 422), response.text[:300]
        assert response.headers["Content-Type"].startswith(PROBLEM)
    assert call("GET", f"{url}/v1/resources/{own_id}", school).json()["clips"] == []
    problem(call("PATCH", f"{url}/v1/resources/{own_id}", school, {"title": " \t "}), 422, "title")

    # 200 clips are kept, the 201st is a 409 (10 000 would be refused from there on), all 200 still there.
    writers = [tokens[name] for name in ("school_write", "spare_one", "spare_two", "bureau_write")]

    def add(index: int) -> int:
        return call("POST", clips, writers[index % len(writers)],
                    {"title": f"知识点{index}", "start_seconds": index, "end_seconds": index + 1.5}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(add, range(200)))
    assert statuses == [201] * 200
    problem(call("POST", clips, school, {"title": "第201个", "start_seconds": 1, "end_seconds": 2}), 409, "200")
    kept = call("GET", f"{url}/v1/resources/{own_id}", school).json()["clips"]
    assert len(kept) == 200 and {clip["title"] for clip in kept} == {f"知识点{index}" for index in range(200)}
    played = call("GET", f"{url}/v1/resources/{own_id}/playback", school).json()
    assert len(played["clips"]) == 200

    # Search parameters.
    search = f"{url}/v1/resources"
    for params, field in (({"from": "2026-13-01"}, "from"), ({"to": "yesterday"}, "to"), ({"limit": 10**9}, "limit"),
                          ({"limit": -1}, "limit"), ({"offset": -1}, "offset"), ({"offset": 10**12}, "offset"),
                          ({"school_id": "1; DROP TABLE resources"}, "school_id"), ({"school_id": 2**40}, "school_id"),
                          ({"q": "x" * 101}, "q"), ({"q": "a\u0000b"}, "q"), ({"q": "\u202e"}, "q"),
                          ({"subject": ""}, "subject"), ({"shared": "perhaps"}, "shared")):
        problem(call("GET", search, school, params=params), 422, field)
    for text in ("' OR 1=1 --", "%", "_", "\\", "浮力%_'\"", "🎓"):
        found = call("GET", search, school, params={"q": text})
        assert found.status_code == 200, found.text
        assert all(item["school_id"] in (city.schools["east_one"], city.schools["east_two"])
                   for item in found.json()["items"])
    everything = call("GET", search, school, params={"from": "0001-01-01", "to": "9999-12-31", "limit": 200})
    assert everything.status_code == 200 and own["session_id"] in [i["session_id"] for i in everything.json()["items"]]
    assert foreign["session_id"] not in [i["session_id"] for i in everything.json()["items"]]

    # Retention days.
    retention = f"{url}/v1/resources/retention"
    for days in (0, -1, 3651, 10**30, "30", 1.5, True, None):
        problem(call("PUT", retention, tokens["bureau_write"], {"days": days}), 422, "days")
    problem(call("PUT", retention, tokens["other_bureau_write"], {"days": 0}), 422, "days")
    assert call("PUT", retention, tokens["bureau_write"], {"days": 3650}).json()["days"] == 3650
    assert call("GET", retention, tokens["other_bureau_write"]).json()["days"] != 3650  # its own bureau's


@pytest.mark.integration
def test_watches_cannot_be_hijacked_or_inflated(library: str, city: City, platform_config: dict[str, Any]):
    url, uri, tokens = library, platform_config["AMQP_URI"], city.tokens
    own = available(recording(city, "east_one"), duration=600.0)
    own_id = publish_resources(city, uri, url, (own, city.bureau_id))[own["session_id"]]
    school = tokens["school_write"]
    started = time.monotonic()
    watch = call("POST", f"{url}/v1/watches", school, {"target_kind": "resource", "target_id": own_id})
    assert watch.status_code == 201, watch.text
    beat_url = f"{url}/v1/watches/{watch.json()['id']}/heartbeat"

    # Somebody else's watch: a 404 like a missing one, for the other bureau, the district and the bureau alike.
    for token in ("other_bureau_write", "east_read", "bureau_write"):
        problem(call("POST", beat_url, tokens[token], {"seconds_watched": 1}), 404, "Watch")
        problem(call("POST", f"{url}/v1/watches/{watch.json()['id']}/end", tokens[token]), 404, "Watch")
    for body in ({"seconds_watched": -1}, {"seconds_watched": 3601}, {"seconds_watched": "5"},
                 {"seconds_watched": None}, {"seconds_watched": True}, {}, {"seconds_watched": 1, "extra": 1}):
        problem(call("POST", beat_url, school, body), 422)
    for raw in (b'{"seconds_watched": NaN}', b'{"seconds_watched": -Infinity}', b'{"seconds_watched": 1e999}'):
        response = requests.post(beat_url, data=raw, timeout=TIMEOUT,
                                 headers={**bearer(school), "Content-Type": "application/json"})
        assert response.status_code in (400, 422) and response.headers["Content-Type"].startswith(PROBLEM)

    # A flood of heartbeats from four tokens of the same school, each claiming an hour, for ~2 s.
    writers = [tokens[name] for name in ("school_write", "spare_one", "spare_two", "rate_limited")]

    def beat(index: int) -> int:
        return call("POST", beat_url, writers[index % len(writers)], {"seconds_watched": 3600}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(beat, range(40)))
    assert set(statuses) == {204}, statuses
    assert call("POST", f"{url}/v1/watches/{watch.json()['id']}/end", school).status_code == 204
    wall = time.monotonic() - started
    assert call("POST", f"{url}/v1/watches/{watch.json()['id']}/end", school).status_code == 204  # ending twice
    problem(call("POST", beat_url, school, {"seconds_watched": 1}), 409, "ended")
    record = next(item for item in call("GET", f"{url}/v1/watches", school, params={"limit": 200}).json()["items"]
                  if item["id"] == watch.json()["id"])
    assert 0 < record["seconds_watched"] <= wall + 0.5, (record, wall)
    # Not visible to the other bureau's list.
    other = call("GET", f"{url}/v1/watches", tokens["other_bureau_write"], params={"limit": 200}).json()["items"]
    assert watch.json()["id"] not in [item["id"] for item in other]


@pytest.mark.integration
def test_clips_added_all_at_once_stop_at_the_limit(library: str, city: City, platform_config: dict[str, Any]):
    """Many writers adding clips at the same moment, near the limit: at most 200, each refusal a 409."""
    url, uri, tokens = library, platform_config["AMQP_URI"], city.tokens
    own = available(recording(city, "east_one"), duration=600.0)
    own_id = publish_resources(city, uri, url, (own, city.bureau_id))[own["session_id"]]
    clips = f"{url}/v1/resources/{own_id}/clips"
    writers = [tokens[name] for name in ("school_write", "spare_one", "spare_two", "bureau_write")]

    def add(index: int) -> int:
        return call("POST", clips, writers[index % len(writers)],
                    {"title": f"要点{index}", "start_seconds": index, "end_seconds": index + 1}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(add, range(180))) == {201}
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(add, range(180, 240)))
    assert statuses.count(201) == 20 and statuses.count(409) == 40, sorted(statuses)
    assert len(call("GET", f"{url}/v1/resources/{own_id}", tokens["bureau_read"]).json()["clips"]) == 200


@pytest.mark.integration
def test_live_lessons_are_patrolled_only_in_scope(library: str, city: City, platform_config: dict[str, Any]):
    """Live lessons are never shared: another school's or bureau's is a 404 to watch and absent from patrol."""
    from tests.activities.broker import publish_event

    url, uri, tokens = library, platform_config["AMQP_URI"], city.tokens
    neighbour = recording(city, "east_two")
    foreign = {**recording(city, "east_one"), "school_id": city.schools["elsewhere"],
               "teacher_id": city.teachers["elsewhere"], "district_id": None}
    publish_event(uri, "classroom_relay", "recording.started", neighbour, bureau_id=city.bureau_id)
    publish_event(uri, "classroom_relay", "recording.started", foreign, bureau_id=city.other_bureau_id)

    def patrolled(token: str) -> set[int]:
        response = call("GET", f"{url}/v1/patrol/sessions", tokens[token])
        assert response.status_code == 200, response.text
        return {item["session_id"] for item in response.json()["items"]}

    wait_for(lambda: neighbour["session_id"] in patrolled("bureau_read")
             and foreign["session_id"] in patrolled("other_bureau_write"), 20.0, "both live", interval=0.3)
    assert foreign["session_id"] not in patrolled("bureau_read") | patrolled("east_read") | patrolled("school_read")
    assert neighbour["session_id"] not in patrolled("other_bureau_write") | patrolled("school_read")
    assert neighbour["session_id"] in patrolled("east_read")
    for token, session_id in (("school_write", neighbour["session_id"]), ("school_write", foreign["session_id"]),
                              ("bureau_write", foreign["session_id"]), ("other_bureau_write", neighbour["session_id"])):
        refused = call("POST", f"{url}/v1/watches", tokens[token], {"target_kind": "live_session",
                                                                   "target_id": session_id})
        problem(refused, 404, "not being recorded live")
    watch = call("POST", f"{url}/v1/watches", tokens["east_read"], {"target_kind": "live_session",
                                                                      "target_id": neighbour["session_id"]})
    assert watch.status_code == 201, watch.text
