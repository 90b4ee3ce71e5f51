"""Sessions on a real (SQLite) database: scheduling, admission, events, tokens, SDP, desired state."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from services.classroom_relay import dataplane_state, exceptions, lessons, media_access, relay_settings, stream_health
from services.classroom_relay.exceptions import AdmissionRefused, Conflict, Forbidden, InvalidInput, NotFound
from services.classroom_relay.models import MBIT, outbox
from services.common.events import event_type_of
from services.common.scope import Scope

from .conftest import FACTS, NOW, classroom, lesson


def events(db) -> list[tuple[str, dict]]:
    rows = db.execute(select(outbox.table.c.routing_key, outbox.table.c.body).order_by(outbox.table.c.sequence))
    return [(event_type_of(key), json.loads(body)) for key, body in rows]


def schedule(db, admin, settings, school, kind="master_teacher", branches=2, **extra) -> dict:
    data = lesson(kind, master_classroom_id=school["master"]["id"], teacher_id=501,
                  branch_classroom_ids=[room["id"] for room in school["branches"][:branches]], **extra)
    return lessons.create_session(db, admin, data, settings, FACTS)


def test_third_branch_is_refused_with_the_master_links_numbers(db, admin, settings, school):
    live = schedule(db, admin, settings, school)
    lessons.start_session(db, admin, live["id"], settings, now=NOW)
    third = school["branches"][2]["id"]
    with pytest.raises(AdmissionRefused) as refused:
        lessons.join_branch(db, admin, live["id"], third, {}, settings, FACTS, now=NOW)
    assert "school 101" in str(refused.value)
    assert refused.value.fields["committed_bps"] == 80 * MBIT
    assert refused.value.fields["requested_bps"] == 40 * MBIT
    assert refused.value.fields["capacity_bps"] == 100 * MBIT
    # A smaller budget fits in what is left (90 − 80 = 10 Mbit/s).
    joined = lessons.join_branch(db, admin, live["id"], third, {"downlink_bps": 10 * MBIT}, settings, FACTS, now=NOW)
    assert joined["state"] == "joined"


def test_start_and_end_publish_session_and_classroom_events_with_times(db, admin, settings, school):
    live = schedule(db, admin, settings, school)
    lessons.start_session(db, admin, live["id"], settings, now=NOW)
    later = NOW + timedelta(minutes=40)
    lessons.end_session(db, admin, live["id"], now=later)
    published = events(db)
    keys = [key for key, _ in published]
    assert keys == ["session.started", "classroom.joined", "classroom.joined",
                    "classroom.left", "classroom.left", "session.ended"]
    ended = published[-1][1]
    assert ended["role"] == "master" and ended["teacher_id"] == 501 and ended["school_id"] == 101
    assert ended["started_at"] == "2026-03-02T08:00:00Z" and ended["ended_at"] == "2026-03-02T08:40:00Z"
    left = published[3][1]
    assert left["role"] == "branch" and left["classroom_id"] == school["branches"][0]["id"]
    assert left["started_at"] == "2026-03-02T08:00:00Z" and left["ended_at"] == "2026-03-02T08:40:00Z"


def test_ending_releases_bandwidth_for_the_next_session(db, admin, settings, school):
    first = schedule(db, admin, settings, school)
    lessons.start_session(db, admin, first["id"], settings, now=NOW)
    lessons.end_session(db, admin, first["id"], now=NOW + timedelta(minutes=1))
    second = schedule(db, admin, settings, school, branches=0)
    lessons.start_session(db, admin, second["id"], settings, now=NOW)
    for room in school["branches"][:2]:
        lessons.join_branch(db, admin, second["id"], room["id"], {}, settings, FACTS, now=NOW)
    assert lessons.get_session(db, admin, second["id"])["status"] == "live"


def test_dedicated_delivery_has_fixed_branches_named_when_scheduled_and_recurs(db, admin, settings, school):
    live = schedule(db, admin, settings, school, kind="dedicated_delivery", branches=2, recurrence="weekdays",
                    recurrence_until=(NOW + timedelta(days=30)).isoformat(), branch_bps=20 * MBIT)
    third = school["branches"][2]["id"]
    with pytest.raises(Conflict, match="fixed branch classes") as refused:
        lessons.join_branch(db, admin, live["id"], third, {}, settings, FACTS)  # not while scheduled ...
    assert refused.value.fields["branch_classroom_ids"] == [room["id"] for room in school["branches"][:2]]
    started = lessons.start_session(db, admin, live["id"], settings, now=NOW)
    assert [member["state"] for member in started["classrooms"]] == ["joined", "joined", "joined"]
    with pytest.raises(Conflict, match="fixed branch classes"):
        lessons.join_branch(db, admin, live["id"], third, {}, settings, FACTS, now=NOW)  # ... nor while live
    # A named class that dropped out may come back.
    first = school["branches"][0]["id"]
    lessons.leave_branch(db, admin, live["id"], first, now=NOW)
    assert lessons.join_branch(db, admin, live["id"], first, {}, settings, FACTS, now=NOW)["state"] == "joined"
    after = lessons.end_session(db, admin, live["id"], now=NOW + timedelta(minutes=40))
    assert after["status"] == "scheduled" and after["occurrences_held"] == 1
    assert after["starts_at"] == "2026-03-03T08:00:00Z"
    assert [member["state"] for member in after["classrooms"]] == ["planned", "planned", "planned"]
    # Friday's lesson is followed by Monday's.
    friday = NOW + timedelta(days=4)
    lessons.start_session(db, admin, live["id"], settings, now=friday)
    monday = lessons.end_session(db, admin, live["id"], now=friday + timedelta(minutes=40))
    assert monday["starts_at"] == "2026-03-09T08:00:00Z"


def test_dedicated_delivery_without_branches_is_invalid(db, admin, settings, school):
    with pytest.raises(InvalidInput) as invalid:
        schedule(db, admin, settings, school, kind="dedicated_delivery", branches=0)
    assert "branch_classroom_ids" in invalid.value.fields


def test_master_teacher_sessions_stay_open_to_joins(db, admin, settings, school):
    live = schedule(db, admin, settings, school, branches=0, branch_bps=20 * MBIT)
    lessons.start_session(db, admin, live["id"], settings, now=NOW)
    for room in school["branches"]:
        assert lessons.join_branch(db, admin, live["id"], room["id"], {}, settings, FACTS, now=NOW)["state"] == "joined"


def test_starting_far_before_the_timetable_is_refused(db, admin, settings, school):
    live = schedule(db, admin, settings, school)
    with pytest.raises(Conflict, match="starts at"):
        lessons.start_session(db, admin, live["id"], settings, now=NOW - timedelta(hours=2))


def test_a_classroom_cannot_be_live_in_two_sessions(db, admin, settings, school):
    first = schedule(db, admin, settings, school, branches=1)
    lessons.start_session(db, admin, first["id"], settings, now=NOW)
    other_master = classroom(db, admin, 101, "录播教室二", "broadcasting")
    second = lessons.create_session(db, admin, lesson(master_classroom_id=other_master["id"]), settings, FACTS)
    lessons.start_session(db, admin, second["id"], settings, now=NOW)
    with pytest.raises(Conflict, match="is live in session"):
        lessons.join_branch(db, admin, second["id"], school["branches"][0]["id"], {}, settings, FACTS, now=NOW)


def test_a_session_that_can_never_fit_is_refused_when_scheduled(db, admin, settings, school):
    with pytest.raises(AdmissionRefused, match="uplink"):
        schedule(db, admin, settings, school, source_bps=30 * MBIT)


def test_a_branch_without_a_receiving_address_cannot_go_live(db, admin, settings, school):
    bare = classroom(db, admin, 105, "无地址教室", "receiving", school_link_capacity_bps=50 * MBIT)
    live = schedule(db, admin, settings, school, branches=0)
    lessons.start_session(db, admin, live["id"], settings, now=NOW)
    with pytest.raises(InvalidInput, match="receiving address"):
        lessons.join_branch(db, admin, live["id"], bare["id"], {}, settings, FACTS, now=NOW)


def test_join_token_is_bound_to_its_classroom_and_session_and_expires(db, admin, settings, school):
    live = schedule(db, admin, settings, school)
    room = school["branches"][0]["id"]
    issued = media_access.issue_join_token(db, admin, live["id"], room, {"ttl_seconds": 60}, settings, now=NOW)
    at = NOW.timestamp() + 30
    assert media_access.check_join_token(settings, issued["token"], live["id"], room, now=at)
    assert not media_access.check_join_token(settings, issued["token"], live["id"], school["branches"][1]["id"], now=at)
    assert not media_access.check_join_token(settings, issued["token"], live["id"] + 1, room, now=at)
    assert not media_access.check_join_token(settings, issued["token"], live["id"], room, now=NOW.timestamp() + 61)
    other_secret = relay_settings.RelaySettings(join_secrets=["another"])
    assert not media_access.check_join_token(other_secret, issued["token"], live["id"], room, now=at)
    assert issued["hello"] == f"LXHELLO1 {issued['token']}"
    assert issued["expires_at"] == "2026-03-02T08:01:00Z"


def test_join_token_only_for_members_and_their_own_school(db, admin, settings, school):
    live = schedule(db, admin, settings, school, branches=1)
    with pytest.raises(NotFound):
        media_access.issue_join_token(db, admin, live["id"], school["branches"][2]["id"], {}, settings, now=NOW)
    neighbour = Scope(bureau_id=7, kind="school", id=103, access="write")
    with pytest.raises(NotFound):  # school 103 is not in this session at all
        media_access.issue_join_token(db, neighbour, live["id"], school["branches"][0]["id"], {}, settings, now=NOW)
    branch_school = Scope(bureau_id=7, kind="school", id=102, access="write")
    with pytest.raises(Forbidden):
        media_access.issue_join_token(db, branch_school, live["id"], school["master"]["id"], {}, settings, now=NOW)
    with pytest.raises(InvalidInput):
        media_access.issue_join_token(db, admin, live["id"], school["master"]["id"], {"ttl_seconds": "x"}, settings)


def test_read_tokens_cannot_schedule(db, settings, school):
    reader = Scope(bureau_id=7, kind="bureau", id=7, access="read")
    with pytest.raises(Forbidden):
        lessons.create_session(db, reader, lesson(master_classroom_id=school["master"]["id"]), settings, FACTS)


def test_bad_input_is_typed(db, admin, settings, school):
    with pytest.raises(InvalidInput) as invalid:
        lessons.create_session(db, admin, {"kind": "lecture", "title": ""}, settings, FACTS)
    assert {"kind", "title", "master_classroom_id", "starts_at"} <= set(invalid.value.fields)
    with pytest.raises(InvalidInput, match="ends_at"):
        lessons.create_session(db, admin, lesson(master_classroom_id=school["master"]["id"],
                                                  ends_at=NOW.isoformat()), settings, FACTS)
    with pytest.raises(InvalidInput):
        lessons.get_session(db, admin, "1")
    with pytest.raises(InvalidInput, match="receive_port"):
        classroom(db, admin, 106, "半个地址", "receiving", receive_host="127.0.0.1")


def confirmed(state: dict, relay_port: int = 51000) -> dict:
    """What a data plane would answer set_state with: one relay socket per output."""
    found = {}
    for entry in state["sessions"]:
        for member in entry["members"]:
            for index, output in enumerate((member.get("receive") or {}).get("outputs", [])):
                key = (entry["session"], member["classroom"], output["source_classroom"], output["track"])
                found[key] = {"relay_address": ["127.0.0.1", relay_port + 2 * index], "ssrc": 1000 + index}
    return found


def test_desired_state_and_sdp_follow_the_live_session(db, admin, settings, school):
    live = schedule(db, admin, settings, school)
    assert dataplane_state.desired_state(db, settings)["sessions"] == []
    lessons.start_session(db, admin, live["id"], settings, now=NOW)
    state = dataplane_state.desired_state(db, settings)
    assert state["secrets"] == ["unit-test-secret"]
    [entry] = state["sessions"]
    first, master_key = school["branches"][0], f"classroom-{school['master']['id']}"
    assert entry["session"] == f"session-{live['id']}"
    master, branch = entry["members"][0], entry["members"][1]
    assert master["classroom"] == master_key and "receive" not in master  # a master-teacher lesson: one way
    assert [(track["track"], track["kind"], track["clock_rate"]) for track in master["tracks"]] == [
        ("audio", "audio", 48000), ("camera", "video", 90000)]
    assert branch["tracks"] == [] and branch["receive"] == {
        "host": "127.0.0.1", "budget_bytes_per_second": 40 * MBIT / 8,
        "outputs": [{"source_classroom": master_key, "track": "audio", "port": 40002},
                    {"source_classroom": master_key, "track": "camera", "port": 40004}]}
    outputs = confirmed(state)
    sdp = media_access.classroom_sdp(db, admin, live["id"], first["id"], {"default": outputs})
    assert "c=IN IP4 127.0.0.1" in sdp
    audio, video = sdp.split("m=")[1:]
    assert audio.startswith("audio 40002 RTP/AVP 97") and "a=rtpmap:97 opus/48000/2" in audio
    assert f"a=label:{master_key}/audio" in audio and "a=mid:0" in audio and "a=rtcp:51000 IN IP4 127.0.0.1" in audio
    assert video.startswith("video 40004 RTP/AVP 96") and "a=rtpmap:96 H264/90000" in video
    assert "a=fmtp:96 packetization-mode=1" in video and "a=rtcp:51002 IN IP4" in video
    assert f"a=label:{master_key}/camera" in video
    # One CNAME for a classroom's tracks, the one the relay's RTCP carries: receivers sync audio and video by it.
    assert f"a=ssrc:1000 cname:{master_key}\r\n" in audio and f"a=ssrc:1001 cname:{master_key}\r\n" in video
    with pytest.raises(exceptions.DataPlaneUnavailable):  # another data plane's view does not count
        media_access.classroom_sdp(db, admin, live["id"], first["id"], {"relay-1": outputs})
    with pytest.raises(Conflict, match="receive"):  # nobody speaks back to this master
        media_access.classroom_sdp(db, admin, live["id"], school["master"]["id"], {"default": outputs})


def test_stream_health_publishes_only_changes_and_counts_media_time(db, admin, settings, school):
    live = schedule(db, admin, settings, school, branches=1)
    lessons.start_session(db, admin, live["id"], settings, now=NOW)
    key, room, master = f"session-{live['id']}", f"classroom-{school['branches'][0]['id']}", \
        f"classroom-{school['master']['id']}"
    sent = {"bytes": 0}

    def stats(send_bytes_per_second: float, loss: float | None) -> dict:
        sent["bytes"] += 100_000
        return {"sessions": {key: {"tracks": [
            {"classroom": master, "track": "camera", "kind": "video", "live": True, "bytes_in": sent["bytes"],
             "layers": [{"rate_bytes_per_second": 500_000}]}],
            "outputs": [{"classroom": room, "source_classroom": master, "track": "camera", "kind": "video",
                         "loss_ratio": loss, "bytes_out": sent["bytes"],
                         "send_rate_bytes_per_second": send_bytes_per_second}]}}}

    step = timedelta(seconds=2)
    assert stream_health.record_stream_health(db, stats(500_000, None), settings, now=NOW) == []
    assert stream_health.record_stream_health(db, stats(100_000, None), settings, now=NOW + step) == [
        "stream.degraded"]
    assert stream_health.record_stream_health(db, stats(100_000, 0.2), settings, now=NOW + 2 * step) == []
    assert stream_health.record_stream_health(db, stats(490_000, 0.0), settings, now=NOW + 3 * step) == [
        "stream.recovered"]
    degraded = [body for routing_key, body in events(db) if routing_key == "stream.degraded"]
    assert degraded[0]["reasons"] == ["below_target"] and degraded[0]["send_rate_bps"] == 800_000
    assert degraded[0]["loss_ratio"] is None  # nobody reported loss yet: absent, not zero
    # Media flowed at each of the three later checks, 2 s apart: 6 s, for the branch and the master.
    members = {member["classroom_id"]: member for member in lessons.get_session(db, admin, live["id"])["classrooms"]}
    assert members[school["branches"][0]["id"]]["media_seconds"] == 6.0
    assert members[school["master"]["id"]]["media_seconds"] == 6.0


def test_a_second_classroom_with_the_same_name_is_a_conflict_not_a_crash(db, admin, school):
    with pytest.raises(Conflict, match="already has a classroom named '录播教室'"):
        classroom(db, admin, 101, "录播教室", "broadcasting")
