"""Watches: bounded heartbeats, silence ends a watch, and what a watch counts as (domain, real SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.activities import log as activities_log
from services.common.errors import Conflict, Forbidden, InvalidInput, NotFound
from services.resources import catalog, watches
from services.resources.models import Watch

from .conftest import BUREAU, EAST, WEST, add_recording, recording_body, scope

RULES = watches.Rules(heartbeat_seconds=30, observation_min_seconds=600)
T0 = datetime(2026, 3, 9, 2, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def watch_row(db, watch_id: str) -> Watch:
    with db.begin():
        row = db.get(Watch, watch_id)
        db.expunge(row)
        return row


def test_heartbeats_are_credited_at_most_the_time_that_passed(db):
    resource_id = add_recording(db, 101)
    school = scope("school", 101)
    with db.begin():
        started = watches.start(db, school, {"target_kind": "resource", "target_id": resource_id}, RULES, at(0))
    assert started["heartbeat_seconds"] == 30
    with db.begin():
        watches.heartbeat(db, school, started["id"], {"seconds_watched": 30}, RULES, at(30))
        watches.heartbeat(db, school, started["id"], {"seconds_watched": 3600}, RULES, at(40))  # claims an hour
        watches.heartbeat(db, school, started["id"], {"seconds_watched": 5}, RULES, at(70))
    assert watch_row(db, started["id"]).seconds_watched == 30 + 10 + 5
    for bad in ({"seconds_watched": -1}, {"seconds_watched": 3601}, {"seconds_watched": "10"}, {}):
        with pytest.raises(InvalidInput), db.begin():
            watches.heartbeat(db, school, started["id"], bad, RULES, at(80))
    with pytest.raises(NotFound), db.begin():  # another token's watch answers like a missing one
        watches.heartbeat(db, scope("school", 102), started["id"], {"seconds_watched": 1}, RULES, at(80))
    with pytest.raises(NotFound), db.begin():
        watches.heartbeat(db, school, "not-a-watch", {"seconds_watched": 1}, RULES, at(80))


def test_silence_for_two_intervals_ends_a_watch_at_its_last_heartbeat(db):
    resource_id = add_recording(db, 101)
    school = scope("school", 101)
    with db.begin():
        first = watches.start(db, school, {"target_kind": "resource", "target_id": resource_id}, RULES, at(0))
        second = watches.start(db, school, {"target_kind": "resource", "target_id": resource_id}, RULES, at(0))
        watches.heartbeat(db, school, first["id"], {"seconds_watched": 30}, RULES, at(30))
        watches.heartbeat(db, school, second["id"], {"seconds_watched": 30}, RULES, at(30))
    with db.begin():
        assert watches.end_silent(db, RULES, at(89)) == 0  # 59 s of silence: not yet
        assert watches.end_silent(db, RULES, at(91)) == 2
    row = watch_row(db, first["id"])
    assert row.ended_at.replace(tzinfo=UTC) == at(30) and row.end_reason == "silent" and row.seconds_watched == 30
    with pytest.raises(Conflict) as late, db.begin():
        watches.heartbeat(db, school, first["id"], {"seconds_watched": 30}, RULES, at(95))
    assert "start a new one" in late.value.detail
    with db.begin():  # ending an ended watch is not an error (clients retry)
        watches.end(db, school, second["id"], RULES, at(95))
    assert watch_row(db, second["id"]).end_reason == "silent"


def observed_for(db, seconds: int, **body) -> tuple[Watch, list[watches.PendingObservation]]:
    resource_id = add_recording(db, 101, **body)
    school = scope("school", 101)
    with db.begin():
        watch = watches.start(db, school, {"target_kind": "resource", "target_id": resource_id,
                                           "viewer_teacher_id": 1101}, RULES, at(0))
        for moment in range(25, seconds + 1, 25):
            watches.heartbeat(db, school, watch["id"], {"seconds_watched": 25}, RULES, at(moment))
        watches.end(db, school, watch["id"], RULES, at(seconds + 1))
    with db.begin():
        pending = [item for item in watches.pending_observations(db, at(seconds + 2)) if item.watch_id == watch["id"]]
    return watch_row(db, watch["id"]), pending


def test_a_teachers_long_enough_watch_becomes_a_lesson_observation_activities_accepts(db):
    row, [pending] = observed_for(db, 900, title="函数的单调性", subject="数学", grade="高一")
    assert row.counted_as == "lesson_observation" and row.activity_state == "pending"
    activity = pending.activity
    assert activity["id"] == watches.activity_id_of(row.id) == watches.activity_id_of(row.id)  # stable
    assert activity["kind"] == "lesson_observation" and activity["teacher_id"] == 1101
    assert activity["details"] == {"mode": "online", "duration_minutes": 15, "observed_teacher_id": 1101,
                                   "lesson": {"subject": "数学", "grade": "高一", "title": "函数的单调性"}}
    assert pending.scope["kind"] == "school" and pending.scope["id"] == 101
    # The activities service's own validation accepts it as sent.
    values = activities_log.validate_activity(activity)
    assert values["details"]["duration_minutes"] == 15
    with db.begin():
        watches.settle(db, row.id, "recorded", "accepted", activity["id"])
        assert watches.pending_observations(db, at(1000)) == []
    assert watch_row(db, row.id).activity_id == activity["id"]


def test_a_lesson_without_subject_or_grade_still_makes_a_valid_observation(db):
    _row, [pending] = observed_for(db, 700, subject=None, grade=None, title=None)
    assert pending.activity["details"]["lesson"]["subject"] == watches.UNNAMED
    activities_log.validate_activity(pending.activity)


def test_a_short_watch_is_kept_but_not_an_observation(db):
    row, pending = observed_for(db, 300)
    assert pending == [] and row.activity_state == "too_short" and row.seconds_watched == 300


def test_an_inspectors_patrol_is_kept_as_supervision(db):
    body = recording_body(103)
    with db.begin():
        catalog.apply_relay_event(db, "recording.started", body | {"ended_at": None}, BUREAU)
    inspector = scope("district", WEST, access="read")
    with db.begin():
        watch = watches.start(db, inspector, {"target_kind": "live_session", "target_id": body["session_id"]},
                              RULES, at(0))
        watches.heartbeat(db, inspector, watch["id"], {"seconds_watched": 20}, RULES, at(20))
        watches.end(db, inspector, watch["id"], RULES, at(21))
    row = watch_row(db, watch["id"])
    assert (row.counted_as, row.activity_state, row.school_id, row.seconds_watched) == ("supervision", "none", 103, 20)
    with db.begin():
        listed = watches.list_watches(db, scope("school", 103), {})
        assert [item["id"] for item in listed["items"]] == [watch["id"]]  # the watched school sees who watched
        assert listed["items"][0]["viewer"] == f"district {WEST}"
        assert watches.list_watches(db, scope("school", 101), {})["items"] == []
    with pytest.raises(NotFound), db.begin():  # a live session outside the scope cannot be watched
        watches.start(db, scope("district", EAST), {"target_kind": "live_session",
                                                    "target_id": body["session_id"]}, RULES, at(0))
    with pytest.raises(Forbidden), db.begin():  # an observation is written to a log: a write token
        watches.start(db, scope("school", 103, access="read"), {
            "target_kind": "live_session", "target_id": body["session_id"], "viewer_teacher_id": 1103}, RULES, at(0))
    for bad in ({"target_kind": "tv", "target_id": 1}, {"target_kind": "resource"},
                {"target_kind": "resource", "target_id": 0}):
        with pytest.raises(InvalidInput), db.begin():
            watches.start(db, inspector, bad, RULES, at(0))
