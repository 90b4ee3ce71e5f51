"""The control plane's side of classroom equipment in: which classrooms the ingest beside a data plane carries
(RTMP unless an RTSP camera is in the secret file), the stream key a school configures its recording host with
(stable for the lesson, refused for branches), and the push of that state to a real ingest process."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from services.classroom_relay import ingest_state, lessons
from services.classroom_relay.dataplane.admission import verify_token
from services.classroom_relay.exceptions import Conflict
from services.classroom_relay.ingest.keys import check_key
from services.classroom_relay.ingest_link import IngestLink, parse_named
from tests.relay_control.conftest import FACTS, NOW, admin, db, lesson, school, settings  # noqa: F401  (fixtures)

MEDIA = ["127.0.0.1", 5004]


def started(db, admin, settings, school) -> dict:  # noqa: F811  (fixtures)
    data = lesson("master_teacher", master_classroom_id=school["master"]["id"], teacher_id=501,
                  branch_classroom_ids=[room["id"] for room in school["branches"][:2]])
    live = lessons.create_session(db, admin, data, settings, FACTS)
    lessons.start_session(db, admin, live["id"], settings, now=NOW)
    db.commit()
    return live


def test_every_live_broadcasting_classroom_gets_an_rtmp_ingest_with_a_key_stable_for_the_lesson(
        db, admin, settings, school) -> None:  # noqa: F811
    assert ingest_state.desired_ingests(db, settings, "default", MEDIA, {}, now=NOW) == {"ingests": []}
    live = started(db, admin, settings, school)
    state = ingest_state.desired_ingests(db, settings, "default", MEDIA, {}, now=NOW)
    (entry,) = state["ingests"]
    master = f"classroom-{school['master']['id']}"
    assert (entry["session"], entry["classroom"], entry["kind"]) == (f"session-{live['id']}", master, "rtmp")
    assert [(t["track"], t["codec"]) for t in entry["tracks"]] == [("audio", "opus"), ("camera", "h264")]
    reason, claims = verify_token([secret.encode() for secret in settings.join_secrets], entry["token"],
                                  NOW.timestamp())
    assert claims is not None and (claims.session, claims.classroom) == (entry["session"], master), reason
    later = ingest_state.desired_ingests(db, settings, "default", MEDIA, {}, now=NOW + timedelta(minutes=20))
    assert later["ingests"][0]["token"] == entry["token"]  # the host's key does not change mid-lesson
    assert ingest_state.desired_ingests(db, settings, "relay-9", MEDIA, {}, now=NOW) == {"ingests": []}
    assert ingest_state.desired_ingests(db, settings, "default", None, {}, now=NOW) == {"ingests": []}

    point = ingest_state.rtmp_publish_point(db, admin, live["id"], school["master"]["id"], settings,
                                            {"default": "rtmp://relay.example.edu.cn:1935/live"}, now=NOW)
    assert point["publish_url"] == f"rtmp://relay.example.edu.cn:1935/live/{point['stream_key']}"
    assert check_key(point["stream_key"], entry["token"], now=NOW.timestamp()) is None
    with pytest.raises(Conflict, match="only the master"):
        ingest_state.rtmp_publish_point(db, admin, live["id"], school["branches"][0]["id"], settings,
                                        {"default": "rtmp://relay/live"}, now=NOW)
    with pytest.raises(Conflict, match="RELAY_INGESTS"):
        ingest_state.rtmp_publish_point(db, admin, live["id"], school["master"]["id"], settings, {}, now=NOW)

    lessons.end_session(db, admin, live["id"], now=NOW + timedelta(minutes=30))
    db.commit()
    assert ingest_state.desired_ingests(db, settings, "default", MEDIA, {}, now=NOW) == {"ingests": []}


def test_a_classroom_in_the_rtsp_secret_file_is_pulled_and_a_broken_file_changes_nothing(
        db, admin, settings, school, tmp_path) -> None:  # noqa: F811
    started(db, admin, settings, school)
    secrets = tmp_path / "rtsp-sources.json"
    secrets.write_text(json.dumps({str(school["master"]["id"]): "rtsp://cam:pw@10.1.2.3/stream1",
                                   "999": "http://not-rtsp"}))
    sources = ingest_state.load_rtsp_sources(str(secrets))
    assert sources == {str(school["master"]["id"]): "rtsp://cam:pw@10.1.2.3/stream1"}
    (entry,) = ingest_state.desired_ingests(db, settings, "default", MEDIA, sources, now=NOW)["ingests"]
    assert entry["kind"] == "rtsp" and entry["rtsp_url"] == "rtsp://cam:pw@10.1.2.3/stream1"
    secrets.write_text("{not json")
    assert ingest_state.load_rtsp_sources(str(secrets)) == {}
    assert ingest_state.load_rtsp_sources(str(tmp_path / "missing.json")) == {}


def test_named_addresses_are_parsed_or_refused_with_the_variable_name() -> None:
    assert parse_named("default=127.0.0.1:7080, relay-1=10.0.0.2:7080", "RELAY_INGESTS") == {
        "default": "127.0.0.1:7080", "relay-1": "10.0.0.2:7080"}
    assert parse_named(None, "RELAY_INGESTS") == {}
    with pytest.raises(ValueError, match="RELAY_INGESTS"):
        parse_named("127.0.0.1:7080", "RELAY_INGESTS")


def test_the_link_pushes_the_state_to_a_real_ingest_process_and_survives_its_absence(
        db, admin, settings, school, dataplane, ingest) -> None:  # noqa: F811
    live = started(db, admin, settings, school)
    state = ingest_state.desired_ingests(db, settings, "default", ["127.0.0.1", dataplane.media_port], {}, now=NOW)
    link = IngestLink({"default": f"127.0.0.1:{ingest.control.port}"}, lambda: dataplane.control_secret)
    reply = link.push("default", state)
    assert reply is not None and reply["ok"], reply
    (confirmed,) = reply["ingests"]
    point = ingest_state.rtmp_publish_point(db, admin, live["id"], school["master"]["id"], settings,
                                            link.rtmp_urls, now=NOW)
    assert confirmed["stream_key"] == point["stream_key"] and point["rtmp_url"] == confirmed["rtmp_url"]
    assert link.push("default", {"ingests": []})["ingests"] == []  # the session ended: the ingest stops
    assert ingest.stats()["ingests"] == []
    away = IngestLink({"default": "127.0.0.1:9"}, lambda: dataplane.control_secret)
    assert away.push("default", state) is None and away.failures == 1  # logged, counted, never raised
    link.close()


def test_the_rpc_gives_the_master_its_publish_point_with_the_typed_error_for_a_branch(
        db, admin, settings, school) -> None:  # noqa: F811
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from nameko.testing.services import worker_factory

    from services.classroom_relay import placement
    from services.classroom_relay.service import ClassroomRelayService

    link = SimpleNamespace(settings=settings, request_push=lambda: None, fleet=placement.Fleet.single,
                           ingest=SimpleNamespace(rtmp_urls={"default": "rtmp://203.0.113.7:1935/live"}))
    service = worker_factory(ClassroomRelayService, db=db, dataplane=link)
    data = lesson(at=datetime.now(UTC), master_classroom_id=school["master"]["id"],
                  branch_classroom_ids=[school["branches"][0]["id"]])
    created = service.create_session(admin.to_dict(), data)
    service.start_session(admin.to_dict(), created["id"])
    point = service.rtmp_publish_point(admin.to_dict(), created["id"], school["master"]["id"])
    assert point["publish_url"].startswith("rtmp://203.0.113.7:1935/live/session-")
    with pytest.raises(Conflict):
        service.rtmp_publish_point(admin.to_dict(), created["id"], school["branches"][0]["id"])
