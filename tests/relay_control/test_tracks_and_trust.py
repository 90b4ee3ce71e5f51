"""Tracks, two-way sessions, admission both ways (audio first), and trust in accounts' facts (SQLite)."""

from __future__ import annotations

import pytest

from services.classroom_relay import classrooms, dataplane_state, lessons, media_access, tracks
from services.classroom_relay.exceptions import AdmissionRefused, InvalidInput, NotFound
from services.classroom_relay.models import MBIT
from services.common.scope import Scope

from .conftest import BUREAU, FACTS, NOW, OTHER_BUREAU, classroom, lesson
from .test_sessions import confirmed, events


def receivers(state: dict) -> dict[str, list[tuple[str, str, int]]]:
    [entry] = state["sessions"]
    return {member["classroom"]: [(output["source_classroom"], output["track"], output["port"])
                                  for output in (member.get("receive") or {}).get("outputs", [])]
            for member in entry["members"]}


def test_interactive_class_every_branch_speaks_back_to_the_master_on_its_own_ports(db, admin, settings, school):
    master = classroom(db, admin, 101, "互动录播教室", "broadcasting", receive_host="127.0.0.1", receive_port=30000,
                       tracks=[{"track": "audio", "kind": "audio", "codec": "pcma"},
                               {"track": "camera", "kind": "video", "layers_bps": [300_000, 1_200_000]},
                               {"track": "courseware", "kind": "video", "layers_bps": [800_000]}])
    branch_ids = [room["id"] for room in school["branches"]]
    live = lessons.create_session(db, admin, lesson(master_classroom_id=master["id"], branch_classroom_ids=branch_ids,
                                                    interactive=True, branch_bps=5 * MBIT), settings, FACTS)
    assert live["interactive"] and [len(member["tracks"]) for member in live["classrooms"]] == [3, 2, 2, 2]
    assert live["classrooms"][0]["tracks"][0]["label"] == f"classroom-{master['id']}/audio"
    lessons.start_session(db, admin, live["id"], settings, now=NOW)
    state = dataplane_state.desired_state(db, settings)
    heard = receivers(state)
    keys = [f"classroom-{ident}" for ident in branch_ids]
    # Each branch has 4 port pairs reserved at the master, in the order it was added: no two streams share one.
    assert heard[f"classroom-{master['id']}"] == [
        (keys[0], "audio", 30000), (keys[0], "camera", 30002),
        (keys[1], "audio", 30008), (keys[1], "camera", 30010),
        (keys[2], "audio", 30016), (keys[2], "camera", 30018)]
    master_key = f"classroom-{master['id']}"
    assert heard[keys[0]] == [(master_key, "audio", 40002), (master_key, "camera", 40004),
                              (master_key, "courseware", 40006)]
    [entry] = state["sessions"]
    master_entry = entry["members"][0]
    # The master gets all its branches send: 3 × (Opus 64k + 2 Mbit/s camera).
    assert master_entry["receive"]["budget_bytes_per_second"] == 3 * (64_000 + 2 * MBIT) / 8
    sdp = media_access.classroom_sdp(db, admin, live["id"], master["id"], {"default": confirmed(state)})
    labels = [line.removeprefix("a=label:") for line in sdp.split("\r\n") if line.startswith("a=label:")]
    assert labels == [f"{key}/{track}" for key in keys for track in ("audio", "camera")]
    branch_sdp = media_access.classroom_sdp(db, admin, live["id"], branch_ids[0], {"default": confirmed(state)})
    assert "m=audio 40002 RTP/AVP 8" in branch_sdp and "a=rtpmap:8 PCMA/8000" in branch_sdp
    assert branch_sdp.count("m=video") == 2
    # The data plane is told what each track is; the per-track hellos name the track.
    assert [(track["track"], track["clock_rate"]) for track in master_entry["tracks"]] == [
        ("audio", 8000), ("camera", 90000), ("courseware", 90000)]
    token = media_access.issue_join_token(db, admin, live["id"], master["id"], {}, settings, now=NOW)
    assert token["hellos"]["courseware"] == f"LXHELLO1 {token['token']} courseware"


def test_online_research_everyone_receives_everyone(db, admin, settings, school):
    host = classroom(db, admin, 101, "研修教室", "receiving", receive_host="127.0.0.1", receive_port=30000)
    branch_ids = [room["id"] for room in school["branches"][:2]]
    live = lessons.create_session(db, admin, lesson("online_research", master_classroom_id=host["id"],
                                                    branch_classroom_ids=branch_ids, branch_bps=9 * MBIT),
                                  settings, FACTS)
    lessons.start_session(db, admin, live["id"], settings, now=NOW)
    heard = receivers(dataplane_state.desired_state(db, settings))
    everyone = {f"classroom-{ident}" for ident in [host["id"], *branch_ids]}
    for receiver, outputs in heard.items():
        assert {source for source, _track, _port in outputs} == everyone - {receiver}
        assert len(outputs) == 4  # two others × (audio, camera)


def test_admission_refuses_a_budget_below_audio_plus_the_lowest_layer_naming_the_numbers(db, admin, settings, school):
    master = classroom(db, admin, 101, "录播教室二", "broadcasting",
                       tracks=[{"track": "audio", "kind": "audio", "codec": "aac"},
                               {"track": "camera", "kind": "video", "layers_bps": [1_200_000]}])
    live = lessons.create_session(db, admin, lesson(master_classroom_id=master["id"], branch_bps=None), settings,
                                  FACTS)
    lessons.start_session(db, admin, live["id"], settings, now=NOW)
    room = school["branches"][0]["id"]
    with pytest.raises(AdmissionRefused) as refused:  # the issue's case: a budget below the only layer
        lessons.join_branch(db, admin, live["id"], room, {"downlink_bps": 1_000_000}, settings, FACTS, now=NOW)
    assert refused.value.fields == {"link": "classroom_downlink", "link_owner_id": room, "budget_bps": 1_000_000,
                                    "audio_bps": 128_000, "lowest_video_bps": 1_200_000, "required_bps": 1_328_000}
    assert "1.3 Mbit/s is needed" in str(refused.value)
    joined = lessons.join_branch(db, admin, live["id"], room, {"downlink_bps": 1_400_000}, settings, FACTS, now=NOW)
    assert joined["state"] == "joined"


def test_track_declarations_are_checked(db, admin):
    with pytest.raises(InvalidInput) as bad:
        classroom(db, admin, 102, "坏音轨", "receiving",
                  tracks=[{"track": "audio", "kind": "audio", "codec": "h264"}])
    assert "tracks" in bad.value.fields
    with pytest.raises(InvalidInput, match="48000"):
        classroom(db, admin, 102, "坏时钟", "receiving",
                  tracks=[{"track": "audio", "kind": "audio", "clock_rate": 8000}])
    with pytest.raises(InvalidInput):
        classroom(db, admin, 102, "倒序", "receiving",
                  tracks=[{"track": "camera", "kind": "video", "layers_bps": [2_000_000, 500_000]}])
    with pytest.raises(InvalidInput) as odd:
        classroom(db, admin, 102, "奇数端口", "receiving", receive_host="127.0.0.1", receive_port=40001)
    assert "even port" in str(odd.value.fields["receive_port"])
    assert tracks.aac_config(48000, 2) == "1190" and tracks.aac_config(44100, 2) == "1210"
    with pytest.raises(ValueError, match="two tracks"):
        tracks.completed([{"track": "camera", "kind": "video"}, {"track": "camera", "kind": "video"}], ())


# --- trust: accounts' facts, not the request body ---------------------------------------------------------


def test_a_classroom_is_registered_only_for_a_school_accounts_puts_in_the_callers_scope(db, admin):
    room = classroom(db, admin, 102, "接收教室", "receiving")
    assert (room["bureau_id"], room["district_id"], room["school_link_capacity_bps"]) == (BUREAU, 2, 50 * MBIT)
    other_bureau = Scope.bureau_admin(OTHER_BUREAU)
    for scope, school in ((admin, 301),  # another bureau's school
                          (admin, 4242),  # no such school: the same answer
                          (Scope(bureau_id=BUREAU, kind="district", id=1, access="write"), 102),  # another district
                          (other_bureau, 101)):
        with pytest.raises(NotFound) as refused:
            classrooms.create_classroom(db, scope, {"school_id": school, "name": "x", "kind": "receiving"}, FACTS)
        assert refused.value.detail == (f"School {school} does not exist or is outside this token's scope "
                                        f"({scope.describe()}).")
    # A link or bureau in the body that accounts does not confirm is refused, not stored.
    with pytest.raises(InvalidInput, match="school_link_capacity_bps is 50000000"):
        classrooms.create_classroom(db, admin, {"school_id": 102, "name": "虚报", "kind": "receiving",
                                                "school_link_capacity_bps": 10_000 * MBIT}, FACTS)
    with pytest.raises(InvalidInput, match="bureau_id"):
        classrooms.create_classroom(db, admin, {"school_id": 102, "name": "虚报", "kind": "receiving",
                                                "bureau_id": OTHER_BUREAU}, FACTS)


def test_teachers_must_be_of_the_sessions_schools_and_in_scope(db, admin, settings, school):
    master = school["master"]["id"]
    for teacher in (601, 502, 9999):  # another bureau's, a branch school's, nobody
        with pytest.raises(NotFound, match=f"Teacher {teacher} is not a teacher"):
            lessons.create_session(db, admin, lesson(master_classroom_id=master, teacher_id=teacher), settings, FACTS)
    live = lessons.create_session(db, admin, lesson(master_classroom_id=master, teacher_id=501), settings, FACTS)
    branch = school["branches"][0]["id"]  # school 102
    with pytest.raises(NotFound, match="Teacher 503"):
        lessons.join_branch(db, admin, live["id"], branch, {"teacher_id": 503}, settings, FACTS)
    assert lessons.join_branch(db, admin, live["id"], branch, {"teacher_id": 502}, settings, FACTS)["teacher_id"] == 502
    # The master school's district may name its teacher; the branch's teacher is outside that district.
    district = Scope(bureau_id=BUREAU, kind="district", id=1, access="write")
    assert lessons.create_session(db, district, lesson(master_classroom_id=master, teacher_id=501), settings,
                                  FACTS)["teacher_id"] == 501


def test_session_events_carry_the_timetable_and_media_time(db, admin, settings, school):
    live = lessons.create_session(db, admin, lesson(master_classroom_id=school["master"]["id"], teacher_id=501,
                                                    branch_classroom_ids=[school["branches"][0]["id"]]),
                                  settings, FACTS)
    lessons.start_session(db, admin, live["id"], settings, now=NOW)
    lessons.end_session(db, admin, live["id"], now=NOW.replace(hour=10))
    [ended] = [body for key, body in events(db) if key == "session.ended"]
    assert (ended["scheduled_starts_at"], ended["scheduled_ends_at"]) == ("2026-03-02T08:00:00Z",
                                                                          "2026-03-02T08:40:00Z")
    assert ended["media_seconds"] == 0.0 and ended["ended_at"] == "2026-03-02T10:00:00Z"


def test_registering_a_tracks_sender_again_is_the_hand_over(db, admin, settings, school):
    """One sender per track (and layer slot): registering another address replaces the first (an encoder
    restarting on a new port); a track the classroom does not publish is refused."""
    master = classroom(db, admin, 101, "录播教室三", "broadcasting",
                       tracks=[{"track": "audio", "kind": "audio"},
                               {"track": "camera", "kind": "video", "layers_bps": [300_000, 1_200_000]}])
    live = lessons.create_session(db, admin, lesson(master_classroom_id=master["id"]), settings, FACTS)
    lessons.start_session(db, admin, live["id"], settings, now=NOW)

    def register(track: str, port: int) -> dict:
        return media_access.register_sender(db, admin, live["id"], master["id"],
                                            {"host": "127.0.0.1", "port": port, "track": track}, settings, now=NOW)

    register("camera", 6000)
    register("camera:1", 6002)
    register("audio", 6004)
    register("camera", 6100)  # the camera encoder restarted on another port
    [entry] = dataplane_state.desired_state(db, settings)["sessions"]
    senders = entry["members"][0]["senders"]
    assert [(sender["track"], sender["address"]) for sender in senders] == [
        ("camera:1", ["127.0.0.1", 6002]), ("audio", ["127.0.0.1", 6004]), ("camera", ["127.0.0.1", 6100])]
    assert len({sender["token"] for sender in senders}) >= 1
    for unknown in ("courseware", "camera:2"):
        with pytest.raises(NotFound, match="publishes no track"):
            register(unknown, 6200)
    with pytest.raises(InvalidInput):
        register("camera:9", 6200)
    token = media_access.issue_join_token(db, admin, live["id"], master["id"], {}, settings, now=NOW)
    assert set(token["hellos"]) == {"audio", "camera", "camera:1"}
