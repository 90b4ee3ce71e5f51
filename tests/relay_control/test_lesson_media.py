"""Live lessons with sound, several pictures and two-way interaction, through the control plane, with real peers.

accounts and classroom_relay over RabbitMQ and PostgreSQL, the data-plane process, and ffmpeg as every
classroom: encoders send each track from its own RTP port (registered through the control plane), receivers
play the SDPs the control plane hands out. Everything on 127.0.0.1, every process bounded in time.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nameko.standalone.rpc import ClusterRpcProxy

from services.accounts.service import AccountsService
from services.classroom_relay.models import MBIT
from services.classroom_relay.service import ClassroomRelayService
from tests.ops.ops_helpers import http_get, scrape_sessions
from tests.relay.relay_harness import DataPlane

from .accounts_city import invent_bureau
from .lesson_peers import (
    FFMPEG,
    AudioSource,
    VideoSource,
    decoder,
    encoder,
    finish,
    frames_by_stream,
    free_port_block,
    labels_of,
    peers,
    yuv420_bytes,
)
from .test_end_to_end import dataplane, eventually  # noqa: F401 (the data-plane fixture)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (apt-get install ffmpeg)"),
]

SEND_SECONDS = 7
RECEIVE_SECONDS = 3


def relay_config(service_config: dict[str, Any], plane: DataPlane) -> dict[str, Any]:
    return {**service_config, "RELAY_DATAPLANES": f"relay-0=127.0.0.1:{plane.control_port}",
            "RELAY_CONTROL_SECRET": plane.control_secret, "RELAY_JOIN_SECRETS": "lesson-media-secret",
            "RELAY_STATS_INTERVAL": 0.2}


def timetable() -> dict[str, str]:
    now = datetime.now(UTC)
    return {"starts_at": now.isoformat(), "ends_at": (now + timedelta(minutes=40)).isoformat()}


def test_master_sends_camera_courseware_and_sound_and_two_branches_play_all_three(
    runner_factory: Any, service_config: dict[str, Any], dataplane: DataPlane, tmp_path: Path  # noqa: F811
) -> None:
    city = invent_bureau(service_config, [100 * MBIT, 50 * MBIT, 50 * MBIT])
    admin = city.admin
    config = relay_config(service_config, dataplane)
    runner_factory(config, ClassroomRelayService, AccountsService).start()
    with peers(limit_seconds=60) as processes, ClusterRpcProxy(config, timeout=10) as rpc:
        relay = rpc.classroom_relay
        master = relay.create_classroom(admin, {
            "school_id": city.schools[0], "name": "录播教室", "kind": "broadcasting",
            "tracks": [{"track": "audio", "kind": "audio", "codec": "opus"},
                       {"track": "camera", "kind": "video", "layers_bps": [1_500_000]},
                       {"track": "courseware", "kind": "video", "layers_bps": [1_000_000]}]})
        branches = [relay.create_classroom(admin, {
            "school_id": city.schools[index], "name": "接收教室", "kind": "receiving",
            "receive_host": "127.0.0.1", "receive_port": free_port_block(3)}) for index in (1, 2)]
        lesson = relay.create_session(admin, {
            "kind": "dedicated_delivery", "title": "四年级科学", "master_classroom_id": master["id"],
            "teacher_id": city.teachers[0], "interactive": False,
            "branch_classroom_ids": [room["id"] for room in branches], **timetable()})
        relay.start_session(admin, lesson["id"])
        master_key = f"classroom-{master['id']}"

        sdps = {room["id"]: eventually(lambda room=room: relay.get_sdp(admin, lesson["id"], room["id"])["sdp"],
                                       timeout=10) for room in branches}
        for sdp in sdps.values():
            assert labels_of(sdp) == [f"{master_key}/audio", f"{master_key}/camera", f"{master_key}/courseware"]
            assert "a=rtpmap:97 opus/48000/2" in sdp and sdp.count("a=rtpmap:96 H264/90000") == 2
        receivers = {room: decoder(sdp, tmp_path / f"{room}.sdp", RECEIVE_SECONDS) for room, sdp in sdps.items()}
        processes += receivers.values()

        # Each track's encoder output is registered by its source port: no hello datagram needed.
        token = relay.issue_join_token(admin, lesson["id"], master["id"])
        media = (token["media_address"][0], token["media_address"][1])
        base = free_port_block(3)
        ports = {"camera": base, "courseware": base + 2, "audio": base + 4}
        for track, port in ports.items():
            relay.register_sender(admin, lesson["id"], master["id"],
                                  {"host": "127.0.0.1", "port": port, "track": track})
        time.sleep(0.5)  # the registrations reach the data plane before the first packet
        sender = encoder(media, SEND_SECONDS, [
            VideoSource("camera", "testsrc2=size=320x240:rate=25", "800k", ports["camera"]),
            VideoSource("courseware", "smptebars=size=352x288:rate=25", "400k", ports["courseware"]),
        ], AudioSource(ports["audio"]))
        processes.append(sender)

        decoded = {room: finish(process, SEND_SECONDS + 8) for room, process in receivers.items()}
        assert sender.poll() is None, "scrape while the encoder still sends"
        exposition = http_get(f"http://127.0.0.1:{dataplane.metrics_port}/metrics")
        for room, (returncode, framecrc, errors) in decoded.items():
            assert returncode == 0 and errors.strip() == "", f"classroom {room}: {returncode} {errors}"
            frames = frames_by_stream(framecrc)
            assert len(frames.get(0, [])) >= 50, f"classroom {room}: {len(frames.get(0, []))} audio frames"
            assert set(frames.get(1, [])) == {yuv420_bytes(320, 240)}, f"classroom {room}: camera"
            assert set(frames.get(2, [])) == {yuv420_bytes(352, 288)}, f"classroom {room}: courseware"
            assert len(frames[1]) >= 25 and len(frames[2]) >= 25

        # /metrics: every track to every branch, labelled with its kind and source; no receiver sent RTCP
        # (ffmpeg does not), so loss is absent rather than a healthy-looking zero.
        session_key = f"session-{lesson['id']}"
        rates = {(labels["classroom"], labels["track"], labels["kind"], labels["source"]): value
                 for labels, value in scrape_sessions(exposition, "lianxiao_relay_send_rate_bytes_per_second")
                 if labels["session"] == session_key}
        expected = {(f"classroom-{room['id']}", track, kind, source) for room in branches
                    for track, kind, source in (("audio", "audio", "microphone"), ("camera", "video", "camera"),
                                                ("courseware", "video", "courseware"))}
        assert set(rates) == expected and all(rate > 0 for rate in rates.values()), rates
        assert not [labels for labels, _value in scrape_sessions(exposition, "lianxiao_relay_loss_ratio")
                    if labels["session"] == session_key]

        time.sleep(2.5)  # one more stream-health pass counts the media time
        members = relay.get_session(admin, lesson["id"])["classrooms"]
        assert all(member["media_seconds"] > 0 for member in members), members
        relay.end_session(admin, lesson["id"])


def test_interactive_class_three_branches_speak_back_and_the_master_tells_them_apart(
    runner_factory: Any, service_config: dict[str, Any], dataplane: DataPlane, tmp_path: Path  # noqa: F811
) -> None:
    city = invent_bureau(service_config, [100 * MBIT, 50 * MBIT, 50 * MBIT, 50 * MBIT])
    admin = city.admin
    config = relay_config(service_config, dataplane)
    runner_factory(config, ClassroomRelayService, AccountsService).start()
    sizes = [(320, 240), (352, 288), (416, 240)]  # each branch's camera, to tell the decoded streams apart
    with peers(limit_seconds=60) as processes, ClusterRpcProxy(config, timeout=10) as rpc:
        relay = rpc.classroom_relay
        master = relay.create_classroom(admin, {
            "school_id": city.schools[0], "name": "名师教室", "kind": "broadcasting",
            "receive_host": "127.0.0.1", "receive_port": free_port_block(12)})
        branches = [relay.create_classroom(admin, {
            "school_id": city.schools[index], "name": "互动教室", "kind": "receiving",
            "receive_host": "127.0.0.1", "receive_port": free_port_block(2)}) for index in (1, 2, 3)]
        lesson = relay.create_session(admin, {
            "kind": "master_teacher", "title": "五年级语文 互动", "master_classroom_id": master["id"],
            "interactive": True, "return_bps": 1_000_000, **timetable()})
        relay.start_session(admin, lesson["id"])
        for room in branches:
            joined = relay.join_branch(admin, lesson["id"], room["id"], {})
            assert [track["track"] for track in joined["tracks"]] == ["audio", "camera"]

        master_sdp = eventually(lambda: relay.get_sdp(admin, lesson["id"], master["id"])["sdp"], timeout=10)
        labels = labels_of(master_sdp)
        assert labels == [f"classroom-{room['id']}/{track}" for room in branches for track in ("audio", "camera")]
        at_master = decoder(master_sdp, tmp_path / "master.sdp", RECEIVE_SECONDS)
        processes.append(at_master)

        token_media = relay.issue_join_token(admin, lesson["id"], branches[0]["id"])["media_address"]
        media = (token_media[0], token_media[1])
        senders = []
        for room, (width, height) in zip(branches, sizes, strict=True):
            base = free_port_block(2)
            relay.register_sender(admin, lesson["id"], room["id"], {"host": "127.0.0.1", "port": base,
                                                                    "track": "camera"})
            relay.register_sender(admin, lesson["id"], room["id"], {"host": "127.0.0.1", "port": base + 2,
                                                                    "track": "audio"})
            senders.append((room, width, height, base))
        time.sleep(0.5)
        for room, width, height, base in senders:
            processes.append(encoder(media, SEND_SECONDS, [
                VideoSource("camera", f"testsrc2=size={width}x{height}:rate=25", "300k", base)],
                AudioSource(base + 2, frequency=300 + 200 * branches.index(room))))

        returncode, framecrc, errors = finish(at_master, SEND_SECONDS + 8)
        assert returncode == 0 and errors.strip() == "", errors
        frames = frames_by_stream(framecrc)
        # Stream 2i is branch i's voice, 2i+1 its camera: each decoded on its own, at its own size.
        for index, (width, height) in enumerate(sizes):
            assert len(frames.get(2 * index, [])) >= 50, f"{labels[2 * index]}: too few audio frames"
            camera = frames.get(2 * index + 1, [])
            assert len(camera) >= 25 and set(camera) == {yuv420_bytes(width, height)}, labels[2 * index + 1]
        relay.end_session(admin, lesson["id"])
