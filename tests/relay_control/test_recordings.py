"""Recordings on the control plane (recordings.py): default by kind, switching, port blocks, keys, the event
bodies, the recorder member in the data plane's state and what the recorder's stats do to the rows."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from services.classroom_relay import dataplane_state, lessons, placement, recordings, stream_health
from services.classroom_relay.dataplane.allocator import FIT_FRACTION, choose_layer
from services.classroom_relay.exceptions import Forbidden, InvalidInput
from services.classroom_relay.models import MBIT, Recording, outbox
from services.common.events import event_type_of
from services.common.scope import Scope
from tests.activities.contract import channel_for, resolve, validator

from .conftest import FACTS, NOW, lesson

RECORDER = recordings.Recorder("default", "127.0.0.1", (42000, 42999))
MASTER_TRACKS = [
    {"track": "audio", "kind": "audio", "codec": "opus"},
    {"track": "camera", "kind": "video", "layers_bps": [500_000, 3 * MBIT]},
    {"track": "courseware", "kind": "video", "source": "screen", "layers_bps": [2 * MBIT]},
]


def events(db, prefix: str = "recording.") -> list[tuple[str, dict]]:
    rows = db.execute(select(outbox.table.c.routing_key, outbox.table.c.body).order_by(outbox.table.c.sequence))
    found = [(event_type_of(key), json.loads(body)) for key, body in rows]
    return [(kind, body) for kind, body in found if kind.startswith(prefix)]


def schedule(db, admin, settings, school, kind="master_teacher", **extra) -> dict:
    data = lesson(kind, master_classroom_id=school["master"]["id"], teacher_id=501,
                  branch_classroom_ids=[school["branches"][0]["id"]], **{"master_tracks": MASTER_TRACKS, **extra})
    return lessons.create_session(db, admin, data, settings, FACTS)


def live_session(db, admin, settings, school, **extra) -> dict:
    created = schedule(db, admin, settings, school, **extra)
    lessons.start_session(db, admin, created["id"], settings, now=NOW, fleet=placement.Fleet.single())
    db.commit()
    return created


@pytest.mark.parametrize(("kind", "expected"), [
    ("dedicated_delivery", True), ("master_teacher", True), ("online_research", False)])
def test_recording_is_on_by_default_for_delivery_and_master_teacher_lessons(db, admin, settings, school, kind,
                                                                            expected):
    created = schedule(db, admin, settings, school, kind, subject="数学", grade="四年级")
    assert (created["record"], created["subject"], created["grade"]) == (expected, "数学", "四年级")
    assert schedule(db, admin, settings, school, kind, record=not expected)["record"] is (not expected)


def test_bad_recording_input_is_refused_with_the_field(db, admin, settings, school):
    with pytest.raises(InvalidInput) as refused:
        schedule(db, admin, settings, school, subject="")
    assert "subject" in refused.value.fields
    created = schedule(db, admin, settings, school)
    for body in ({}, {"record": "yes"}, {"record": True, "extra": 1}, []):
        with pytest.raises(InvalidInput):
            recordings.set_recording(db, admin, created["id"], body)
    with pytest.raises(Forbidden):
        reader = Scope(bureau_id=7, kind="bureau", id=7, access="read")
        recordings.set_recording(db, reader, created["id"], {"record": False})


def test_port_blocks_are_even_blocks_of_eight_within_the_range():
    assert recordings.port_blocks(42000, 42015) == [42000, 42008]
    assert recordings.port_blocks(42001, 42016) == [42002]  # 42010–42017 would leave the range
    assert recordings.free_base({42000}, 42000, 42015) == 42008
    assert recordings.free_base({42000, 42008}, 42000, 42015) is None
    assert [track["port"] for track in recordings.recorded_tracks(
        [{"track": name, "kind": "video"} for name in "abcde"], 42008)] == [42008, 42010, 42012, 42014]


def test_only_what_the_recorder_copies_is_recorded_and_a_program_is_needed():
    published = [{"track": "audio", "kind": "audio", "codec": "pcma"}, {"track": "courseware", "kind": "video"},
                 {"track": "camera", "kind": "video", "codec": "h264"}]
    recorded = recordings.recorded_tracks(published, 42000)
    assert [(track["track"], track["port"]) for track in recorded] == [("courseware", 42002), ("camera", 42004)]
    assert recordings.has_program(recorded) and not recordings.has_program(recorded[:1])
    assert recordings.has_program(recordings.recorded_tracks([{"track": "mic", "kind": "audio", "codec": "aac"}], 0))


def test_a_master_without_anything_recordable_gets_no_recording(db, admin, settings, school):
    live_session(db, admin, settings, school, master_tracks=[
        {"track": "audio", "kind": "audio", "codec": "pcmu"}, {"track": "courseware", "kind": "video"}])
    assert recordings.reconcile(db, RECORDER, NOW) == [] and events(db) == []


def test_a_live_session_gets_a_recording_a_port_block_and_a_started_event(db, admin, settings, school):
    first = live_session(db, admin, settings, school, subject="数学", grade="四年级")
    running = recordings.reconcile(db, RECORDER, NOW)
    assert len(running) == 1 and recordings.reconcile(db, RECORDER, NOW) == running  # idempotent
    recording = running[0]
    assert (recording.base_port, recording.keep, recording.state) == (42000, True, "recording")
    assert [(track["track"], track["port"]) for track in recording.tracks] == [
        ("audio", 42000), ("camera", 42002), ("courseware", 42004)]
    kind, body = events(db)[0]
    assert kind == "recording.started"
    assert body == {"recording_id": recording.id, "key": f"rec-{recording.id}", "session_id": first["id"],
                    "session_kind": "master_teacher", "title": "四年级数学", "school_id": 101,
                    "classroom_id": school["master"]["id"], "teacher_id": 501, "subject": "数学", "grade": "四年级",
                    "district_id": 1, "keep": True, "started_at": "2026-03-02T08:00:00Z"}
    assert re.fullmatch(r"rec-[0-9]+", body["key"])
    db.commit()
    # A second live session on the same recorder takes the next block.
    other = lessons.create_session(db, admin, lesson(master_classroom_id=school["master"]["id"],
                                                     starts_at=(NOW + timedelta(hours=1)).isoformat(),
                                                     ends_at=(NOW + timedelta(hours=2)).isoformat()), settings, FACTS)
    lessons.end_session(db, admin, first["id"], now=NOW + timedelta(minutes=40))
    lessons.start_session(db, admin, other["id"], settings, now=NOW + timedelta(minutes=45),
                          fleet=placement.Fleet.single())
    running = recordings.reconcile(db, RECORDER, NOW + timedelta(minutes=45))
    assert [(item.session_id, item.base_port) for item in running] == [(other["id"], 42008)]  # 42000 is ending
    assert recordings.unfinished_counts(db) == {("default", "recording"): 1, ("default", "ending"): 1}


def test_session_dump_shows_the_running_recording(db, admin, settings, school):
    created = live_session(db, admin, settings, school)
    assert lessons.get_session(db, admin, created["id"])["recording"] is None  # no recorder answered yet
    recording = recordings.reconcile(db, RECORDER, NOW)[0]
    db.commit()
    db.expire_all()
    shown = lessons.get_session(db, admin, created["id"])["recording"]
    assert shown["key"] == f"rec-{recording.id}" and shown["keep"] is True and shown["state"] == "recording"


def test_switching_while_live_ends_the_recording_and_starts_one_with_the_other_keep(db, admin, settings, school):
    created = live_session(db, admin, settings, school)
    kept = recordings.reconcile(db, RECORDER, NOW)[0]
    later = NOW + timedelta(minutes=5)
    shown = recordings.set_recording(db, admin, created["id"], {"record": False}, now=later)
    assert shown["record"] is False and shown["recording"] is None
    assert (kept.state, kept.ended_at.replace(tzinfo=later.tzinfo)) == ("ending", later)
    patrol = recordings.reconcile(db, RECORDER, later)[0]
    assert patrol.id != kept.id and patrol.keep is False and patrol.base_port == 42008  # 42000 still finalizing
    assert [(kind, body["key"], body["keep"]) for kind, body in events(db)] == [
        ("recording.started", f"rec-{kept.id}", True), ("recording.ended", f"rec-{kept.id}", True),
        ("recording.started", f"rec-{patrol.id}", False)]
    assert events(db)[1][1]["state"] == "finalizing" and events(db)[1][1]["ended_at"] == "2026-03-02T08:05:00Z"
    # Switching back on: the patrol-only one ends, a kept one starts; the same value again changes nothing.
    recordings.set_recording(db, admin, created["id"], {"record": True}, now=later)
    recordings.set_recording(db, admin, created["id"], {"record": True}, now=later)
    again = recordings.reconcile(db, RECORDER, later)
    assert len(again) == 1 and again[0].keep is True and patrol.state == "ending"


def test_switching_a_scheduled_session_records_nothing_yet(db, admin, settings, school):
    created = schedule(db, admin, settings, school)
    assert recordings.set_recording(db, admin, created["id"], {"record": False})["record"] is False
    assert recordings.reconcile(db, RECORDER, NOW) == [] and events(db) == []


def test_ending_the_session_ends_its_recording_and_finished_makes_it_available(db, admin, settings, school):
    created = live_session(db, admin, settings, school, subject="数学")
    recording = recordings.reconcile(db, RECORDER, NOW)[0]
    key = f"rec-{recording.id}"
    lessons.end_session(db, admin, created["id"], now=NOW + timedelta(minutes=40))
    assert recording.state == "ending" and events(db)[-1][0] == "recording.ended"
    assert recordings.recorder_state(db, "default", "127.0.0.1") == {"recordings": []}  # the recorder finalizes
    finalizing = {"key": key, "state": "finalizing", "duration_seconds": 2399.5, "bytes": 10, "segments": 400}
    assert recordings.apply_stats(db, "default", {"recordings": [finalizing]}) == []
    assert (recording.recorder_state, recording.segments) == ("finalizing", 400)
    files = {"hls": "index.m3u8", "courseware_hls": "courseware.m3u8", "program_mp4": "program.mp4",
             "courseware_mp4": "courseware.mp4"}
    gaps = [{"start_seconds": 600.0, "end_seconds": 604.5, "reason": "recorder_restart"}]
    finished = {**finalizing, "state": "finished", "bytes": 812_000_000, "files": files, "gaps": gaps,
                "tracks": [{"track": "audio"}]}
    now = NOW + timedelta(minutes=41)
    assert recordings.apply_stats(db, "default", {"recordings": [finished]}, now) == [key]
    assert recording.state == "available"
    kind, body = events(db)[-1]
    assert kind == "recording.available"
    assert body == {
        "recording_id": recording.id, "key": key, "session_id": created["id"], "session_kind": "master_teacher",
        "title": "四年级数学", "school_id": 101, "classroom_id": school["master"]["id"], "teacher_id": 501,
        "subject": "数学", "grade": None, "district_id": 1, "started_at": "2026-03-02T08:00:00Z",
        "ended_at": "2026-03-02T08:40:00Z", "duration_seconds": 2399.5,
        "tracks": [{"track": "audio", "kind": "audio", "source": "microphone", "codec": "opus"},
                   {"track": "camera", "kind": "video", "source": "camera", "codec": "h264"},
                   {"track": "courseware", "kind": "video", "source": "screen", "codec": "h264"}],
        "files": files, "gaps": gaps, "bytes": 812_000_000}
    assert recordings.unfinished_counts(db) == {}
    # Reported again (the forget was lost): forgotten again, no second event.
    assert recordings.apply_stats(db, "default", {"recordings": [finished]}, now) == [key]
    assert [kind for kind, _ in events(db)].count("recording.available") == 1


def test_patrol_only_and_empty_recordings_are_discarded_and_a_failed_one_failed(db, admin, settings, school):
    created = live_session(db, admin, settings, school, record=False)
    patrol = recordings.reconcile(db, RECORDER, NOW)[0]
    lessons.end_session(db, admin, created["id"], now=NOW + timedelta(minutes=40))
    done = {"key": f"rec-{patrol.id}", "state": "finished", "files": {"hls": "index.m3u8"}}
    assert recordings.apply_stats(db, "default", {"recordings": [done]}) == [f"rec-{patrol.id}"]
    assert patrol.state == "discarded"
    assert "recording.available" not in [kind for kind, _ in events(db)]
    silent = live_session(db, admin, settings, school)
    empty = recordings.reconcile(db, RECORDER, NOW)[0]
    lessons.end_session(db, admin, silent["id"], now=NOW + timedelta(minutes=40))
    nothing = {"key": f"rec-{empty.id}", "state": "finished", "duration_seconds": 0, "files": {"hls": "index.m3u8"}}
    assert recordings.apply_stats(db, "default", {"recordings": [nothing]}) == [f"rec-{empty.id}"]
    assert empty.state == "discarded"  # the master never sent: nothing to publish
    assert "recording.available" not in [kind for kind, _ in events(db)]
    other = live_session(db, admin, settings, school)
    failing = recordings.reconcile(db, RECORDER, NOW)[0]
    assert failing.session_id == other["id"]
    assert recordings.apply_stats(db, "default", {"recordings": [{"key": f"rec-{failing.id}", "state": "failed"}]}) \
        == [f"rec-{failing.id}"]
    assert failing.state == "failed" and events(db)[-1][1]["state"] == "failed"


@pytest.mark.parametrize("stats", [
    None, [], "x", {"recordings": None}, {"recordings": [None, 1, "rec-1", {"key": 5}, {"key": "rec-x"}]},
    {"recordings": [{"key": "rec-1", "state": "finished", "files": ["x"], "gaps": "many", "bytes": -1,
                     "duration_seconds": "long", "last_segment_at": "yesterday"}]},
])
def test_malformed_recorder_stats_never_raise(db, admin, settings, school, stats):
    live_session(db, admin, settings, school)
    recordings.reconcile(db, RECORDER, NOW)
    recordings.apply_stats(db, "default", stats)
    recording = db.scalar(select(Recording))
    assert recording.bytes >= 0 and isinstance(recording.gaps, list) and isinstance(recording.files, dict)


def test_stats_of_another_recorder_do_not_touch_the_rows(db, admin, settings, school):
    live_session(db, admin, settings, school)
    recording = recordings.reconcile(db, RECORDER, NOW)[0]
    stranger = {"recordings": [{"key": f"rec-{recording.id}", "state": "finished", "files": {"hls": "i.m3u8"}}]}
    assert recordings.apply_stats(db, "elsewhere", stranger) == []
    assert recording.state == "recording"


# --- the data plane's and the recorder's desired states ---------------------------------------------------------


def test_the_data_plane_gets_a_receive_only_recorder_member_for_every_master_track(db, admin, settings, school):
    created = live_session(db, admin, settings, school)
    before = lessons.committed_loads(db)
    recording = recordings.reconcile(db, RECORDER, NOW)[0]
    state = dataplane_state.desired_state(db, settings, "default")
    members = state["sessions"][0]["members"]
    recorder = members[-1]
    master = f"classroom-{school['master']['id']}"
    assert recorder["classroom"] == f"recorder-{created['id']}" and recorder["tracks"] == []
    assert recorder["receive"]["host"] == "127.0.0.1"
    assert recorder["receive"]["outputs"] == [{"source_classroom": master, "track": name, "port": port}
                                               for name, port in (("audio", 42000), ("camera", 42002),
                                                                  ("courseware", 42004))]
    # Not a classroom: admission's loads (every school's link) are the same with it as without it.
    assert lessons.committed_loads(db) == before
    assert [member["classroom"] for member in members[:-1]] == [master, f"classroom-{school['branches'][0]['id']}"]
    # The relay's own budget: every video track gets its best layer, even with all layers at full rate.
    budget = recorder["receive"]["budget_bytes_per_second"]
    rates = {"camera": [(1, 500_000 / 8), (2, 3 * MBIT / 8)], "courseware": [(3, 2 * MBIT / 8)]}
    audio = 64_000 / 8
    lowest = sum(min(rate for _ssrc, rate in layers) for layers in rates.values())
    spare = (budget - audio) * FIT_FRACTION - lowest
    for layers in rates.values():
        low = min(rate for _ssrc, rate in layers)
        chosen = choose_layer(layers, (low + spare) / FIT_FRACTION, -1)
        best = max(layers, key=lambda item: item[1])
        assert chosen == best[0]
        spare -= best[1] - low
    recordings.set_recording(db, admin, created["id"], {"record": False}, now=NOW)
    assert all(not member["classroom"].startswith("recorder-")
               for member in dataplane_state.desired_state(db, settings, "default")["sessions"][0]["members"])
    assert recording.state == "ending"


def test_the_recorder_gets_an_sdp_with_one_section_per_track_at_its_ports(db, admin, settings, school):
    created = live_session(db, admin, settings, school)
    recording = recordings.reconcile(db, RECORDER, NOW)[0]
    master = f"classroom-{school['master']['id']}"
    confirmed = {(f"session-{created['id']}", f"recorder-{created['id']}", master, "camera"):
                 {"relay_address": ["127.0.0.1", 40100], "ssrc": 1234}}
    state = recordings.recorder_state(db, "default", "127.0.0.1", confirmed)
    (entry,) = state["recordings"]
    assert (entry["key"], entry["session"], entry["keep"]) == (f"rec-{recording.id}", f"session-{created['id']}",
                                                               True)
    assert entry["tracks"] == [
        {"track": "audio", "kind": "audio", "source": "microphone", "codec": "opus", "port": 42000},
        {"track": "camera", "kind": "video", "source": "camera", "codec": "h264", "port": 42002},
        {"track": "courseware", "kind": "video", "source": "screen", "codec": "h264", "port": 42004}]
    sdp = entry["sdp"]
    assert re.findall(r"^m=(\w+) (\d+) RTP/AVP (\d+)", sdp, re.M) == [
        ("audio", "42000", "97"), ("video", "42002", "96"), ("video", "42004", "96")]
    assert "a=rtpmap:97 opus/48000/2" in sdp and "a=rtcp:40100 IN IP4 127.0.0.1" in sdp
    assert f"a=label:{master}/courseware" in sdp
    assert recordings.recorder_state(db, "other", "127.0.0.1") == {"recordings": []}


def test_stream_health_and_media_time_ignore_the_recorder(db, admin, settings, school):
    created = live_session(db, admin, settings, school)
    recordings.reconcile(db, RECORDER, NOW)
    master = f"classroom-{school['master']['id']}"
    branch = f"classroom-{school['branches'][0]['id']}"
    recorder_output = {"classroom": f"recorder-{created['id']}", "source_classroom": master, "track": "camera",
                       "kind": "video", "bytes_out": 10**9, "send_rate_bytes_per_second": 0, "loss_ratio": 0.5}
    stats = {"sessions": {f"session-{created['id']}": {"outputs": [recorder_output], "tracks": []}}}
    assert stream_health.record_stream_health(db, stats, settings, now=NOW) == []
    stream_health.record_stream_health(db, stats, settings, now=NOW + timedelta(seconds=2))
    members = {member["classroom_id"]: member for member in lessons.get_session(db, admin, created["id"])["classrooms"]}
    assert all(member["media_seconds"] == 0 and member["stream_state"] == "ok" for member in members.values())
    labels = dataplane_state.live_session_labels(db)
    assert [label["master_classroom"] for label in labels] == [master] and branch not in str(labels)


def test_every_recording_event_follows_the_asyncapi_document(db, admin, settings, school):
    created = live_session(db, admin, settings, school, subject="数学")
    recording = recordings.reconcile(db, RECORDER, NOW)[0]
    lessons.end_session(db, admin, created["id"], now=NOW + timedelta(minutes=40))
    finished = {"key": f"rec-{recording.id}", "state": "finished", "duration_seconds": 2400.0, "bytes": 5,
                "files": {"hls": "index.m3u8", "courseware_hls": None, "program_mp4": "program.mp4",
                          "courseware_mp4": None},
                "gaps": [{"start_seconds": 1.0, "end_seconds": 2.0, "reason": "relay_restart"}]}
    recordings.apply_stats(db, "default", {"recordings": [finished]})
    found = events(db)
    assert [kind for kind, _ in found] == ["recording.started", "recording.ended", "recording.available"]
    for kind, body in found:
        channel = channel_for("classroom_relay.events", f"bureau.7.{kind}")
        pointer = channel["subscribe"]["message"]["$ref"]
        assert resolve(channel["subscribe"]["message"])["name"] == "Recording" + kind.split(".")[1].title()
        errors = [error.message for error in validator(f"{pointer}/payload").iter_errors(body)]
        assert errors == [], (kind, errors)


def test_refusals_are_kept_and_an_ending_recording_the_recorder_never_lists_fails(db, admin, settings, school):
    created = live_session(db, admin, settings, school)
    recording = recordings.reconcile(db, RECORDER, NOW)[0]
    key = f"rec-{recording.id}"
    recordings.mark_refused(db, "default", [{"key": key, "error": "disk_full", "message": "2 GB left"}, None, 3,
                                            {"key": "rec-999"}, {"key": 5}])
    assert recording.recorder_state == "refused: disk_full" and recording.state == "recording"
    recordings.mark_refused(db, "default", "nonsense")
    ended_at = NOW + timedelta(minutes=40)
    lessons.end_session(db, admin, created["id"], now=ended_at)
    # Listed (finalizing) or still within the grace: it stays ending.
    recordings.apply_stats(db, "default", {"recordings": [{"key": key, "state": "finalizing"}]},
                           ended_at + timedelta(minutes=10))
    recordings.apply_stats(db, "default", {"recordings": []}, ended_at + timedelta(minutes=1))
    recordings.apply_stats(db, "default", {"garbage": True}, ended_at + timedelta(minutes=10))
    assert recording.state == "ending"
    recordings.apply_stats(db, "default", {"recordings": []}, ended_at + recordings.ENDING_GRACE + timedelta(seconds=1))
    assert recording.state == "failed" and recording.recorder_state == "unknown to the recorder"


def test_a_recording_stopped_by_a_full_disk_is_published_with_what_it_has(db, admin, settings, school):
    live_session(db, admin, settings, school)
    recording = recordings.reconcile(db, RECORDER, NOW)[0]
    stopped = {"key": f"rec-{recording.id}", "state": "stopped_disk_full", "duration_seconds": 600.0,
               "files": {"hls": "index.m3u8", "program_mp4": None}}
    assert recordings.apply_stats(db, "default", {"recordings": [stopped]}, NOW) == [f"rec-{recording.id}"]
    assert recording.state == "available"
    assert [kind for kind, _ in events(db)] == ["recording.started", "recording.ended", "recording.available"]
    assert events(db)[-1][1]["files"]["program_mp4"] is None  # the MP4 did not fit: the HLS plays
