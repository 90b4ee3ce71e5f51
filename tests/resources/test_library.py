"""The library's domain, on a real SQLite database: resources from events, search, scope, sharing, clips."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from sqlalchemy import select

from services.common.errors import Forbidden, InvalidInput, NotFound
from services.resources import catalog, library
from services.resources.models import LiveRecording, Resource, outbox

from .conftest import BUREAU, EAST, WEST, add_recording, recording_body, scope


def published(db) -> list[dict]:
    with db.begin():
        return [json.loads(row.body) | {"_routing_key": row.routing_key}
                for row in db.execute(select(outbox.table).order_by(outbox.table.c.sequence))]


def live_state(db, recording_id: int) -> LiveRecording:
    with db.begin():
        return db.get(LiveRecording, recording_id)


def test_a_finished_recording_becomes_a_resource_once_with_its_facts(db):
    body = recording_body(101, title=None, gaps=[{"start_seconds": 600.0, "end_seconds": 612.5,
                                                  "reason": "recorder_restart"}])
    with db.begin():
        first = catalog.recording_available(db, body, BUREAU)
        again = catalog.recording_available(db, body, BUREAU)  # the event delivered twice
    assert first.id == again.id
    with db.begin():
        out = library.get_resource(db, scope("school", 101), first.id)
    assert out["school_id"] == 101 and out["teacher_id"] == 1101 and out["subject"] == "数学"
    assert out["recording_key"] == body["key"] and out["duration_seconds"] == 2700.0
    assert out["gaps"] == [{"start_seconds": 600.0, "end_seconds": 612.5, "reason": "recorder_restart"}]
    assert [track["track"] for track in out["tracks"]] == ["audio", "camera"]
    assert out["title"].startswith("七年级 数学 ") and out["shared"] is False and out["kept"] is False
    assert out["clips"] == []
    events = published(db)
    assert len(events) == 1 and events[0]["_routing_key"] == f"bureau.{BUREAU}.resource.published"
    assert events[0]["resource_id"] == first.id and events[0]["shared_with_alliance"] is False


def test_the_lesson_date_is_the_bureaus_calendar_day(db):
    # 17:30 UTC on 1 March is 01:30 on 2 March in Asia/Shanghai.
    resource_id = add_recording(db, 102, started_at=datetime.fromisoformat(
        "2026-03-01T17:30:00+00:00"))
    with db.begin():
        assert library.get_resource(db, scope("bureau", BUREAU), resource_id)["date"] == "2026-03-02"


def test_a_malformed_recording_event_is_refused_by_name(db):
    with pytest.raises(InvalidInput) as refused, db.begin():
        catalog.recording_available(db, recording_body(101, duration_seconds=-3), BUREAU)
    assert "duration_seconds" in refused.value.fields
    with pytest.raises(InvalidInput), db.begin():
        catalog.recording_available(db, {**recording_body(101), "key": "../../etc"}, BUREAU)


def test_live_recordings_follow_started_ended_available_and_never_come_back(db):
    body = recording_body(103)
    started = {name: body[name] for name in ("recording_id", "key", "session_id", "session_kind", "title",
                                             "school_id", "classroom_id", "teacher_id", "subject", "grade",
                                             "started_at")} | {"keep": True}
    with db.begin():
        catalog.apply_relay_event(db, "recording.started", started, BUREAU)
    row = live_state(db, body["recording_id"])
    assert row.state == "recording" and row.district_id == WEST  # from accounts' school.created
    with db.begin():
        catalog.apply_relay_event(db, "recording.ended", started | {"ended_at": body["ended_at"],
                                                                    "state": "finalizing"}, BUREAU)
        catalog.apply_relay_event(db, "recording.started", started, BUREAU)  # late duplicate: stays ended
    assert live_state(db, body["recording_id"]).state == "ended"
    with db.begin():
        catalog.apply_relay_event(db, "recording.available", body, BUREAU)
    assert live_state(db, body["recording_id"]).state == "available"


def test_search_filters_each_narrow_the_list(db):
    a = add_recording(db, 101, subject="数学", grade="七年级", title="有理数的加法",
                      started_at=datetime.fromisoformat("2026-04-01T01:00:00+00:00"))
    b = add_recording(db, 101, subject="语文", grade="八年级", title="背影",
                      started_at=datetime.fromisoformat("2026-04-02T01:00:00+00:00"))
    c = add_recording(db, 102, subject="数学", grade="八年级", title="勾股定理",
                      started_at=datetime.fromisoformat("2026-04-03T01:00:00+00:00"))
    bureau = scope("bureau", BUREAU)

    def ids(**params) -> list[int]:
        with db.begin():
            found = library.search(db, bureau, params)
        assert found["total"] >= len(found["items"])
        return [item["id"] for item in found["items"] if item["id"] in (a, b, c)]

    assert ids() == [c, b, a]  # newest first
    assert ids(school_id=101) == [b, a]
    assert ids(teacher_id=1102) == [c]
    assert ids(subject="数学") == [c, a]
    assert ids(grade="八年级") == [c, b]
    assert ids(**{"from": "2026-04-02", "to": "2026-04-02"}) == [b]
    assert ids(q="勾股") == [c]
    assert ids(q="语文") == [b]  # text matches the subject too
    assert ids(q="100%") == []  # LIKE's wildcards are taken literally
    with db.begin():
        page = library.search(db, bureau, {"school_id": 101, "limit": 1, "offset": 1})
    assert page["total"] == 2 and [item["id"] for item in page["items"]] == [a]
    with pytest.raises(InvalidInput) as refused, db.begin():
        library.search(db, bureau, {"from": "2026-05-01", "to": "2026-04-01"})
    assert "from" in refused.value.fields
    with pytest.raises(InvalidInput), db.begin():
        library.search(db, bureau, {"limit": 100000})


def visible(db, who) -> set[int]:
    with db.begin():
        return {item["id"] for item in library.search(db, who, {"limit": 200})["items"]}


def test_scope_bureau_district_school_and_another_bureau(db):
    ids = {school: add_recording(db, school) for school in (101, 102, 103, 104, 201)}
    assert visible(db, scope("bureau", BUREAU)) >= {ids[101], ids[102], ids[103], ids[104]}
    assert ids[201] not in visible(db, scope("bureau", BUREAU))
    assert visible(db, scope("district", EAST)) & set(ids.values()) == {ids[101], ids[102]}
    assert visible(db, scope("school", 102)) & set(ids.values()) == {ids[102]}
    with pytest.raises(NotFound) as missing, db.begin():
        library.get_resource(db, scope("school", 102), ids[101])
    assert "not visible" in missing.value.detail
    with pytest.raises(NotFound), db.begin():
        library.get_resource(db, scope("bureau", BUREAU), ids[201])


def test_alliance_partners_see_only_what_is_shared_and_cannot_change_it(db):
    mine, partners = add_recording(db, 101), add_recording(db, 104)
    stranger = add_recording(db, 102)  # same district as 101, not in the alliance
    assert partners not in visible(db, scope("school", 101))
    with db.begin():
        changed = library.update_resource(db, scope("school", 104), partners, {"shared": True})
    assert changed["shared"] is True
    assert partners in visible(db, scope("school", 101))
    assert partners in visible(db, scope("district", EAST))  # a district sees what is shared with its schools
    assert partners not in visible(db, scope("school", 102))
    with db.begin():
        library.update_resource(db, scope("school", 102), stranger, {"shared": True})
    assert stranger not in visible(db, scope("school", 104))  # shared, but 102 is in no alliance with 104
    assert mine not in visible(db, scope("school", 104))  # 101 has not shared it
    with pytest.raises(Forbidden) as refused, db.begin():
        library.update_resource(db, scope("school", 101), partners, {"title": "改名"})
    assert "alliance partner" in refused.value.detail
    with pytest.raises(Forbidden), db.begin():
        library.add_clip(db, scope("school", 101), partners, {"title": "片段", "start_seconds": 1, "end_seconds": 2})
    shared_events = [event for event in published(db) if event["resource_id"] == partners]
    assert [event["shared_with_alliance"] for event in shared_events] == [False, True]
    with db.begin():  # sharing again publishes nothing new
        library.update_resource(db, scope("school", 104), partners, {"shared": True})
    assert len([event for event in published(db) if event["resource_id"] == partners]) == 2


def test_who_may_change_metadata(db):
    resource_id = add_recording(db, 101)
    with db.begin():
        out = library.update_resource(db, scope("district", EAST), resource_id,
                                      {"title": "有理数复习课", "subject": "数学", "grade": "七年级", "kept": True})
    assert (out["title"], out["kept"]) == ("有理数复习课", True)
    with pytest.raises(Forbidden) as read_only, db.begin():
        library.update_resource(db, scope("school", 101, access="read"), resource_id, {"title": "只读"})
    assert "write token" in read_only.value.detail
    with pytest.raises(NotFound), db.begin():
        library.update_resource(db, scope("district", WEST), resource_id, {"title": "别区"})
    for bad in ({}, {"title": ""}, {"shared": "yes"}, {"owner": 3}, {"title": "a\u202eb"}):
        with pytest.raises(InvalidInput), db.begin():
            library.update_resource(db, scope("school", 101), resource_id, bad)
    with db.begin():
        assert db.get(Resource, resource_id).title == "有理数复习课"  # the refusals changed nothing


def test_clips_lie_within_the_recording(db):
    resource_id = add_recording(db, 101, duration_seconds=2400.0)
    school = scope("school", 101)
    with db.begin():
        clip = library.add_clip(db, school, resource_id, {"title": "合并同类项", "start_seconds": 300,
                                                          "end_seconds": 540.5})
        whole = library.add_clip(db, school, resource_id, {"title": "整节课", "start_seconds": 0,
                                                           "end_seconds": 2400})
    assert clip["start_seconds"] == 300 and clip["end_seconds"] == 540.5
    for bad, field in (({"title": "倒着", "start_seconds": 600, "end_seconds": 300}, "end_seconds"),
                       ({"title": "空", "start_seconds": 600, "end_seconds": 600}, "end_seconds"),
                       ({"title": "超出", "start_seconds": 2000, "end_seconds": 2400.5}, "end_seconds"),
                       ({"title": "负", "start_seconds": -1, "end_seconds": 3}, "start_seconds"),
                       ({"start_seconds": 1, "end_seconds": 3}, "title")):
        with pytest.raises(InvalidInput) as refused, db.begin():
            library.add_clip(db, school, resource_id, bad)
        assert field in refused.value.fields, (bad, refused.value.fields)
    with db.begin():
        library.delete_clip(db, school, resource_id, whole["id"])
        clips = library.get_resource(db, school, resource_id)["clips"]
    assert [item["id"] for item in clips] == [clip["id"]]
    with pytest.raises(NotFound), db.begin():
        library.delete_clip(db, school, resource_id, whole["id"])


def test_a_live_recordings_district_falls_back_to_an_earlier_recording_of_its_school(db):
    # School 301 was created before this service listened to accounts: no school.created ever reached it.
    with db.begin():
        catalog.recording_available(db, recording_body(101) | {"school_id": 301, "district_id": EAST}, BUREAU)
    body = recording_body(101) | {"school_id": 301, "district_id": None}
    with db.begin():
        catalog.apply_relay_event(db, "recording.started", body | {"ended_at": None}, BUREAU)
    assert live_state(db, body["recording_id"]).district_id == EAST
