"""Unit tests of recording, idempotency, corrections, moderation and queries (SQLite, no broker)."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import select

from services.activities import classroom, log, moderation, queries
from services.activities.exceptions import Conflict, Forbidden, InvalidInput, NotFound
from services.activities.models import outbox
from services.common.events import event_type_of
from services.common.scope import Scope
from tests.activities.activity_fixtures import BUREAU, EAST_DISTRICT, MASTER_SCHOOL


def lesson_prep(**overrides):
    data = {
        "id": str(uuid.uuid4()),
        "kind": "collective_lesson_prep",
        "teacher_id": 1,
        "group_id": 7,
        "occurred_at": "2025-03-04T15:00:00+08:00",
        "details": {
            "lead_preparer_id": 1, "topic": "分数的初步认识", "participant_ids": [1, 4, 5],
            "mode": "online", "duration_minutes": 90,
        },
    }
    data.update(overrides)
    return data


def blog_post(teacher_id=1, **overrides):
    data = {
        "id": str(uuid.uuid4()), "kind": "blog_post", "teacher_id": teacher_id,
        "occurred_at": "2025-03-05T20:00:00", "details": {"title": "听课反思", "word_count": 1200},
    }
    data.update(overrides)
    return data


def events(session):
    rows = session.execute(select(outbox.table).order_by(outbox.table.c.sequence)).mappings().all()
    assert all(row["routing_key"].startswith(f"bureau.{BUREAU}.") for row in rows)
    return [(event_type_of(row["routing_key"]), row["event_id"], json.loads(row["body"])) for row in rows]


def test_collective_lesson_prep_credits_online_hours_and_publishes_its_statement(session, master_scope):
    data = lesson_prep()
    outcome = log.record(session, master_scope, data)
    assert outcome["status"] == "accepted"
    activity = outcome["activity"]
    assert (activity["school_id"], activity["district_id"], activity["bureau_id"]) == (
        MASTER_SCHOOL, EAST_DISTRICT, BUREAU)
    assert (activity["online_hours"], activity["offline_hours"], activity["duration_minutes"]) == (1.5, 0.0, 90)
    assert activity["occurred_at"] == "2025-03-04T07:00:00.000Z"
    [(routing_key, event_id, statement)] = events(session)
    assert routing_key == "activity.recorded.collective_lesson_prep"
    assert event_id == statement["id"] == data["id"]
    assert statement["actor"]["account"]["name"] == "teacher/1"
    assert statement["verb"]["id"] == "https://lianxiao.example/xapi/verbs/prepared-collectively"
    assert statement["result"]["duration"] == "PT1H30M"
    assert statement["context"]["extensions"]["https://lianxiao.example/xapi/extensions/school"] == MASTER_SCHOOL
    assert statement["context"]["extensions"]["https://lianxiao.example/xapi/extensions/group"] == 7


def test_a_blog_post_records_no_time_and_claims_no_credit(session, master_scope):
    """Activities states the time an activity took, not what it credits: a post is untimed, as the
    documents' default credit table (reporting's face, served by GET /v1/rules) says of blog posts."""
    from services.reporting.schemas import DEFAULT_CREDITS  # the test compares the two faces

    outcome = log.record(session, master_scope, blog_post())
    activity = outcome["activity"]
    assert (activity["duration_minutes"], activity["online_hours"], activity["offline_hours"]) == (0, 0.0, 0.0)
    [(_key, _id, statement)] = events(session)
    assert statement["result"]["duration"] == "PT0S"
    assert set(statement["result"]["extensions"].values()) == {0.0}
    listed = queries.list_activities(session, master_scope, {})["items"]
    assert [(item["online_hours"], item["offline_hours"]) for item in listed] == [(0.0, 0.0)]
    assert DEFAULT_CREDITS["blog_post"] == {"basis": "none"}


def test_offline_study_credits_offline_hours(session, master_scope):
    outcome = log.record(session, master_scope, {
        "kind": "offline_study", "teacher_id": 1, "occurred_at": "2025-03-06T09:00:00+08:00",
        "details": {"title": "校本研修", "hours": "2.5"},
    })
    assert (outcome["activity"]["online_hours"], outcome["activity"]["offline_hours"]) == (0.0, 2.5)


def test_unknown_kind_and_unknown_fields_are_named(session, master_scope):
    with pytest.raises(InvalidInput, match="kind") as caught:
        log.record(session, master_scope, lesson_prep(kind="party"))
    assert "known kinds" in caught.value.fields["kind"][0]
    with pytest.raises(InvalidInput) as caught:
        log.record(session, master_scope, lesson_prep(colour="red", details={
            **lesson_prep()["details"], "mood": "happy", "mode": "telepathy",
        }))
    assert "colour" in caught.value.fields
    assert set(caught.value.fields["details"]) == {"mood", "mode"}
    assert "details.mood" in caught.value.detail


def test_supervision_visit_needs_its_written_report(session, bureau_scope):
    with pytest.raises(InvalidInput) as caught:
        log.record(session, bureau_scope, {
            "kind": "supervision_visit", "teacher_id": 3, "occurred_at": "2025-03-06T09:00:00+08:00",
            "details": {"visited_school_id": MASTER_SCHOOL, "mode": "offline", "duration_minutes": 120},
        })
    assert "report" in caught.value.fields["details"]


def test_classroom_sessions_cannot_be_recorded_by_clients(session, master_scope):
    with pytest.raises(InvalidInput, match="kind"):
        log.record(session, master_scope, {
            "kind": "classroom_session_taught", "teacher_id": 1, "occurred_at": "2025-03-06T09:00:00+08:00",
            "details": {"session_id": "s1", "classroom_id": 1, "role": "master",
                        "started_at": "2025-03-06T09:00:00Z", "ended_at": "2025-03-06T09:40:00Z"},
        })


def test_same_id_same_content_returns_the_original_and_publishes_nothing_more(session, master_scope):
    data = lesson_prep()
    first = log.record(session, master_scope, data)
    again = log.record(session, master_scope, dict(data))
    assert again["status"] == "duplicate"
    assert again["activity"] == first["activity"]
    assert len(events(session)) == 1


def test_same_id_different_content_is_a_conflict(session, master_scope):
    data = lesson_prep()
    log.record(session, master_scope, data)
    with pytest.raises(Conflict, match="cannot be used"):
        log.record(session, master_scope, {**data, "details": {**data["details"], "duration_minutes": 45}})


def test_a_school_token_records_only_for_its_own_teachers(session, master_scope):
    with pytest.raises(Forbidden):
        log.record(session, master_scope, blog_post(teacher_id=3))
    read_only = Scope(BUREAU, "school", MASTER_SCHOOL, "read")
    with pytest.raises(Forbidden, match="only read"):
        log.record(session, read_only, blog_post())
    with pytest.raises(NotFound, match="not known"):
        log.record(session, master_scope, blog_post(teacher_id=999))


def test_a_group_must_be_one_of_the_teachers_groups(session, master_scope):
    with pytest.raises(InvalidInput, match="group 8"):
        log.record(session, master_scope, lesson_prep(group_id=8))


def test_batch_accepts_the_good_items_and_explains_the_bad_one(session, bureau_scope):
    items = [blog_post(), blog_post(teacher_id=2), blog_post(details={"title": ""}), blog_post(teacher_id=999)]
    outcome = log.record_batch(session, bureau_scope, items)
    assert [result["status"] for result in outcome["results"]] == ["accepted", "accepted", "rejected", "rejected"]
    assert (outcome["accepted"], outcome["duplicate"], outcome["rejected"]) == (2, 0, 2)
    assert set(outcome["results"][2]["fields"]["details"]) == {"title", "word_count"}
    assert outcome["results"][3]["error"] == "UnknownTeacher"
    again = log.record_batch(session, bureau_scope, items[:2])
    assert [result["status"] for result in again["results"]] == ["duplicate", "duplicate"]
    assert len(events(session)) == 2


def test_a_conflicting_item_is_rejected_without_losing_the_rest(session, bureau_scope):
    original = blog_post()
    log.record(session, bureau_scope, original)
    changed = {**original, "details": {"title": "另一篇", "word_count": 10}}
    outcome = log.record_batch(session, bureau_scope, [blog_post(), changed])
    assert [result["status"] for result in outcome["results"]] == ["accepted", "rejected"]
    assert outcome["results"][1]["error"] == "Conflict"


def test_repeated_ids_inside_one_batch_refuse_the_whole_batch(session, bureau_scope):
    post = blog_post()
    with pytest.raises(InvalidInput, match="repeats") as caught:
        log.record_batch(session, bureau_scope, [post, blog_post(), {**post, "id": post["id"].upper()}])
    assert set(caught.value.fields["items"]) == {"0", "2"}
    assert events(session) == []


def test_batch_size_is_bounded(session, bureau_scope):
    with pytest.raises(InvalidInput, match="at most 500"):
        log.record_batch(session, bureau_scope, [blog_post() for _ in range(501)])
    with pytest.raises(InvalidInput, match="array"):
        log.record_batch(session, bureau_scope, {"not": "a list"})


def test_a_correction_is_a_new_fact_that_supersedes_the_original(session, master_scope):
    original = log.record(session, master_scope, lesson_prep())["activity"]
    correction = lesson_prep(corrects=original["id"], details={**lesson_prep()["details"], "duration_minutes": 60})
    corrected = log.record(session, master_scope, correction)["activity"]
    assert corrected["corrects"] == original["id"]
    assert log.get_activity(session, master_scope, original["id"])["superseded_by"] == corrected["id"]
    assert log.get_activity(session, master_scope, original["id"])["online_hours"] == 1.5
    routing_key, _, statement = events(session)[-1]
    assert routing_key == "activity.corrected.collective_lesson_prep"
    assert statement["context"]["statement"] == {"objectType": "StatementRef", "id": original["id"]}
    with pytest.raises(Conflict, match="already corrected"):
        log.record(session, master_scope, lesson_prep(corrects=original["id"]))


def test_a_blog_host_hides_a_comment_which_stays_recorded(session, bureau_scope):
    post = log.record(session, bureau_scope, blog_post(teacher_id=2))["activity"]
    comment = log.record(session, bureau_scope, {
        "kind": "comment", "teacher_id": 1, "occurred_at": "2025-03-05T21:00:00+08:00",
        "details": {"on_activity_id": post["id"], "text": "广告内容"},
    })["activity"]
    with pytest.raises(Forbidden, match="not a blog host"):
        moderation.hide(session, bureau_scope, comment["id"], {"moderator_id": 1, "reason": "广告"})
    hidden = moderation.hide(session, bureau_scope, comment["id"], {"moderator_id": 2, "reason": "广告"})
    assert (hidden["hidden"], hidden["hidden_by_teacher_id"], hidden["hidden_reason"]) == (True, 2, "广告")
    again = moderation.hide(session, bureau_scope, comment["id"], {"moderator_id": 2, "reason": "另一理由"})
    assert again["hidden_reason"] == "广告"
    routing_key, _, statement = events(session)[-1]
    assert routing_key == "activity.hidden.comment"
    assert statement["object"] == {"objectType": "StatementRef", "id": comment["id"]}
    assert statement["result"]["response"] == "广告"
    assert len([event for event in events(session) if event[0].startswith("activity.hidden")]) == 1
    listed = queries.list_activities(session, bureau_scope, {"kind": "comment"})["items"]
    assert [item["id"] for item in listed] == [comment["id"]] and listed[0]["hidden"]
    assert queries.list_activities(session, bureau_scope, {"kind": "comment", "include_hidden": False})["items"] == []
    with pytest.raises(InvalidInput, match="Only comment"):
        moderation.hide(session, bureau_scope, log.record(session, bureau_scope, lesson_prep())["activity"]["id"],
                        {"moderator_id": 2, "reason": "不喜欢"})


def test_queries_page_with_a_stable_cursor_and_respect_scope(session, bureau_scope, master_scope):
    ids = [log.record(session, bureau_scope, blog_post(teacher_id=1 + index % 3))["activity"]["id"]
           for index in range(7)]
    seen, cursor = [], None
    while True:
        page = queries.list_activities(session, bureau_scope, {"limit": 3, "cursor": cursor})
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        log.record(session, bureau_scope, blog_post(teacher_id=2))  # arrivals never shift pages
    assert seen[:7] == ids and len(seen) == len(set(seen))
    mine = queries.list_activities(session, master_scope, {})["items"]
    assert {item["school_id"] for item in mine} == {MASTER_SCHOOL}
    by_teacher = queries.list_activities(session, bureau_scope, {"teacher_id": 3})["items"]
    assert {item["teacher_id"] for item in by_teacher} == {3}
    window = queries.list_activities(session, bureau_scope, {
        "since": "2025-03-05T00:00:00+08:00", "until": "2025-03-06T00:00:00+08:00"})["items"]
    assert len(window) == len(seen)
    assert queries.list_activities(session, bureau_scope, {"until": "2025-03-05T00:00:00+08:00"})["items"] == []
    with pytest.raises(InvalidInput, match="cursor"):
        queries.list_activities(session, bureau_scope, {"cursor": "garbage!"})


def session_event(**overrides):
    body = {"session_id": "sess-1", "classroom_id": 11, "school_id": MASTER_SCHOOL, "teacher_id": 1,
            "started_at": "2025-03-06T01:00:00Z", "ended_at": "2025-03-06T01:40:00Z", "role": "master"}
    body.update(overrides)
    return body


def test_classroom_session_events_credit_teaching_and_attendance_once(session):
    taught = classroom.record_session_event(session, "session.ended", session_event())
    assert taught["activity"]["kind"] == "classroom_session_taught"
    assert taught["activity"]["online_hours"] == pytest.approx(0.67)
    attended = classroom.record_session_event(
        session, "classroom.left", session_event(teacher_id=2, classroom_id=12, role="branch"))
    assert attended["activity"]["kind"] == "classroom_session_attended"
    repeated = classroom.record_session_event(
        session, "session.ended", session_event(teacher_id=2, classroom_id=12, role="branch"))
    assert repeated["status"] == "duplicate"
    assert classroom.record_session_event(session, "session.ended", session_event(teacher_id=None)) is None
    with pytest.raises(InvalidInput, match="role"):
        classroom.record_session_event(session, "session.ended", session_event(role="observer"))
    with pytest.raises(InvalidInput, match="ended_at"):
        classroom.record_session_event(session, "session.ended", session_event(
            session_id="sess-2", ended_at="2025-03-06T00:00:00Z"))


def test_classroom_credit_is_capped_by_the_timetable_and_by_media_time(session):
    # In the session 01:00–02:30 for a lesson timetabled 01:00–01:40 that carried 25 minutes of media.
    capped = classroom.record_session_event(session, "session.ended", session_event(
        session_id="sess-cap", ended_at="2025-03-06T02:30:00Z", scheduled_starts_at="2025-03-06T01:00:00Z",
        scheduled_ends_at="2025-03-06T01:40:00Z", media_seconds=1500))
    assert capped["activity"]["online_hours"] == pytest.approx(25 / 60, abs=0.01)
    # Past the timetable only: 40 minutes, not 90.
    late = classroom.record_session_event(session, "session.ended", session_event(
        session_id="sess-late", teacher_id=2, ended_at="2025-03-06T02:30:00Z",
        scheduled_starts_at="2025-03-06T01:00:00Z", scheduled_ends_at="2025-03-06T01:40:00Z", media_seconds=5400))
    assert late["activity"]["online_hours"] == pytest.approx(40 / 60, abs=0.01)
    # A classroom that never carried media earns nothing.
    assert classroom.record_session_event(session, "classroom.left", session_event(
        session_id="sess-silent", role="branch", media_seconds=0)) is None
