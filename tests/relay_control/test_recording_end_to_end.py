"""A lesson recorded from end to end (docs/recording.md), with real peers only: accounts and classroom_relay over
RabbitMQ and PostgreSQL, the data-plane process, the recorder process beside it (RELAY_RECORDERS), and ffmpeg as
the broadcasting classroom sending Opus + H.264. Starting the session attaches the recorder (recording.started);
ending it finalizes the recording, which becomes available (recording.available) with files ffprobe reads.
Everything on 127.0.0.1, every process bounded in time."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Consumer, Queue
from nameko.standalone.rpc import ClusterRpcProxy

from services.accounts.service import AccountsService
from services.classroom_relay.models import MBIT
from services.classroom_relay.service import ClassroomRelayService
from services.common.events import event_exchange, event_type_of
from services.common.metrics import registry_for
from services.resources.service import ResourcesService
from tests.activities.broker import wait_for as poll
from tests.activities.contract import contract_errors
from tests.relay.relay_harness import REPO_ROOT, DataPlane, free_tcp_port, start_dataplane, stop_process

from .accounts_city import invent_bureau
from .lesson_peers import FFMPEG, AudioSource, VideoSource, encoder, free_port_block, peers

FFPROBE = shutil.which("ffprobe")
RECORDER = importlib.util.find_spec("services.classroom_relay.recorder")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(FFMPEG is None or FFPROBE is None, reason="ffmpeg is not installed (apt-get install ffmpeg)"),
    pytest.mark.skipif(RECORDER is None, reason="the recorder (services/classroom_relay/recorder) is not here"),
]

SEND_SECONDS = 6
READY = re.compile(rb"relay-recorder ready control=(\d+)")


class Recorder:
    """The recorder process beside the data plane, restartable on the same ports, root and secret."""

    def __init__(self, control_port: int, media: int, root: Path, secret_file: str, log: Path) -> None:
        self.control_port, self.media, self.root = control_port, media, root
        self.secret_file, self.log = secret_file, log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:  # its log in a file: a pipe nobody reads would stall it
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.classroom_relay.recorder", "--control-port", str(self.control_port),
                 "--metrics-port", "0", "--control-secret-file", self.secret_file, "--root", str(self.root),
                 "--media-host", "127.0.0.1", "--media-ports", f"{self.media}-{self.media + 15}"],
                cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.PIPE, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        line = b""
        while time.monotonic() < deadline and self.process.poll() is None and not READY.search(line):
            line = self.process.stdout.readline() if self.process.stdout else b""
        assert READY.search(line), f"the recorder did not start: {line!r} {self.log.read_text()[-2000:]}"

    def kill(self) -> None:
        """As a crash or an OOM kill does it: no chance to finalize anything."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> str:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=20)
            stop_process(self.process)
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def relay_pair(tmp_path: Path) -> Iterator[tuple[DataPlane, Recorder]]:
    """A data plane and the recorder beside it, sharing the control secret the data plane wrote (as `make run`
    starts them)."""
    secret_file = str(tmp_path / "relay-control.secret")
    plane = start_dataplane(secret_file=secret_file)
    plane.control.close()  # the control plane under test is its only client
    recorder = Recorder(free_tcp_port(), free_port_block(8), tmp_path / "recordings", secret_file,
                        tmp_path / "recorder.log")
    try:
        recorder.start()
        yield plane, recorder
    finally:
        recorder_log = recorder.stop()
        stop_process(plane.process)
        plane_errors = plane.process.stderr.read().decode(errors="replace") if plane.process.stderr else ""
        assert "Traceback" not in recorder_log, recorder_log
        assert "Traceback" not in plane_errors, plane_errors


def ffprobe(path: Path) -> dict[str, Any]:
    assert FFPROBE is not None
    result = subprocess.run([FFPROBE, "-v", "error", "-print_format", "json", "-show_streams", "-show_format",
                             str(path)], capture_output=True, timeout=30, check=True)
    return json.loads(result.stdout)


wait_for = partial(poll, interval=0.2)  # (fetch, timeout, what)


class Events:
    """Every event on the relay's exchange, by type, through one consumer on the test's own queue."""

    def __init__(self, connection: Connection, queue: Queue) -> None:
        self.connection = connection
        self.received: dict[str, list[Any]] = {}
        self.consumer = Consumer(connection, [queue], accept=["json"], callbacks=[self._keep])
        self.consumer.consume()

    def _keep(self, _body: Any, message: Any) -> None:
        self.received.setdefault(event_type_of(message.delivery_info["routing_key"]), []).append(message)
        message.ack()

    def wait(self, event: str, timeout: float, count: int = 1) -> list[dict[str, Any]]:
        """The bodies of the first `count` `event`s, each checked against the AsyncAPI document."""
        deadline = time.monotonic() + timeout
        while len(self.received.get(event, [])) < count and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                self.connection.drain_events(timeout=0.5)
        found = self.received.get(event, [])
        assert len(found) >= count, f"{len(found)} {event} within {timeout} s (got {sorted(self.received)})"
        for message in found:
            assert contract_errors("classroom_relay.events", message.delivery_info["routing_key"], message.headers,
                                   message.body) == []
        return [json.loads(message.body) for message in found[:count]]


@pytest.fixture
def recorded_relay(runner_factory: Any, service_config: dict[str, Any], relay_pair: tuple[DataPlane, Recorder],
                   unique: Any) -> Iterator[dict[str, Any]]:
    """accounts, classroom_relay (RELAY_RECORDERS: the recorder beside the data plane) and the resource library
    that consumes its recording events, a master school and its broadcasting classroom publishing Opus + H.264,
    and the relay's events."""
    plane, recorder = relay_pair
    root = recorder.root
    city = invent_bureau(service_config, [100 * MBIT])
    config = {**service_config, "RELAY_DATAPLANES": f"relay-0=127.0.0.1:{plane.control_port}",
              "RELAY_RECORDERS": f"relay-0=127.0.0.1:{recorder.control_port}",
              "RELAY_CONTROL_SECRET_FILE": str(root.parent / "relay-control.secret"),
              "RELAY_JOIN_SECRETS": "recording-secret", "RELAY_STATS_INTERVAL": 0.2, "RELAY_RECONCILE_INTERVAL": 1,
              "PLAYBACK_SECRET": "recording-playback-secret"}
    queue = Queue(unique("recording-subscriber-"), exchange=event_exchange("classroom_relay"),
                  routing_key="#", durable=False, auto_delete=True)
    with Connection(config["AMQP_URI"]) as connection:
        queue(connection).declare()
        events = Events(connection, queue)
        runner = runner_factory(config, ClassroomRelayService, AccountsService, ResourcesService)
        runner.start()
        with ClusterRpcProxy(config, timeout=10) as rpc:
            master = rpc.classroom_relay.create_classroom(city.admin, {
                "school_id": city.schools[0], "name": "录播教室", "kind": "broadcasting",
                "tracks": [{"track": "audio", "kind": "audio", "codec": "opus"},
                           {"track": "camera", "kind": "video", "layers_bps": [800_000]}]})
            yield {"relay": rpc.classroom_relay, "resources": rpc.resources, "admin": city.admin, "city": city,
                   "master": master, "events": events, "plane": plane, "root": root, "recorder": recorder,
                   "registry": registry_for(next(iter(runner.containers)))}


def start_lesson(relay: Any, admin: dict, city: Any, master: dict, **extra: Any) -> dict:
    now = datetime.now(UTC)
    lesson = relay.create_session(admin, {
        "kind": "master_teacher", "title": "四年级数学", "master_classroom_id": master["id"],
        "teacher_id": city.teachers[0], "starts_at": now.isoformat(),
        "ends_at": (now + timedelta(minutes=40)).isoformat(), **extra})
    relay.start_session(admin, lesson["id"])
    return lesson


def send_media(relay: Any, admin: dict, lesson: dict, master: dict, seconds: float) -> subprocess.Popen:
    """The master's encoder: camera (H.264) and voice (Opus), each from a port registered with the relay."""
    token = relay.issue_join_token(admin, lesson["id"], master["id"])
    media = (token["media_address"][0], token["media_address"][1])
    base = free_port_block(2)
    ports = {"camera": base, "audio": base + 2}
    for track, port in ports.items():
        relay.register_sender(admin, lesson["id"], master["id"], {"host": "127.0.0.1", "port": port, "track": track})
    time.sleep(0.5)  # the registrations reach the data plane before the first packet
    return encoder(media, seconds, [VideoSource("camera", "testsrc2=size=320x240:rate=25", "800k", ports["camera"])],
                   AudioSource(ports["audio"]))


def test_a_master_teacher_lesson_is_recorded_and_becomes_available(recorded_relay: dict[str, Any]) -> None:
    relay, admin, city, master = (recorded_relay[name] for name in ("relay", "admin", "city", "master"))
    events, plane, root = recorded_relay["events"], recorded_relay["plane"], recorded_relay["root"]
    with peers(limit_seconds=100) as processes:
        lesson = start_lesson(relay, admin, city, master, subject="数学", grade="四年级")
        assert lesson["record"] is True  # 名师课堂: recorded unless switched off
        (started,) = events.wait("recording.started", timeout=15)
        key = started["key"]
        assert (started["session_id"], started["keep"], started["subject"], started["grade"]) == (
            lesson["id"], True, "数学", "四年级")
        assert started["school_id"] == city.schools[0] and started["classroom_id"] == master["id"]
        shown = wait_for(lambda: relay.get_session(admin, lesson["id"])["recording"], 10, "the recording")
        assert shown["key"] == key and shown["state"] == "recording"
        # The resource library heard it: the lesson is on the patrol list, with a signed live playlist.
        resources = recorded_relay["resources"]
        (patrolled,) = wait_for(lambda: [item for item in resources.patrol_sessions(admin)["items"]
                                         if item["recording_key"] == key], 15, "the patrol list")
        assert patrolled["session_id"] == lesson["id"] and f"/{key}/index.m3u8" in patrolled["live_url"]
        running = {"dataplane": "relay-0", "state": "recording"}
        wait_for(lambda: recorded_relay["registry"].get_sample_value("lianxiao_relay_recordings", running) == 1, 10,
                 "the recordings gauge")

        sender = send_media(relay, admin, lesson, master, SEND_SECONDS)
        processes.append(sender)
        sending_since = time.monotonic()
        # The data plane forwards both tracks to the recorder member (not a classroom).
        outputs = wait_for(lambda: [output for output in (plane.stats()["sessions"].get(
            f"session-{lesson['id']}") or {}).get("outputs", []) if output["classroom"].startswith("recorder-")
            and output.get("bytes_out", 0) > 0], 10, "media towards the recorder")
        assert {output["classroom"] for output in outputs} == {f"recorder-{lesson['id']}"}
        time.sleep(max(0.0, sending_since + SEND_SECONDS - time.monotonic()))
        assert sender.poll() is None, sender.stderr.read() if sender.stderr else ""
        relay.end_session(admin, lesson["id"])  # while it still sends: the recording stops at the end
        sender.kill()

        (ended,) = events.wait("recording.ended", timeout=10)
        assert (ended["key"], ended["state"]) == (key, "finalizing")
        (available,) = events.wait("recording.available", timeout=60)
        # ...and made it a resource of the lesson's school, findable by subject.
        (resource,) = wait_for(lambda: resources.search_resources(admin, {"subject": "数学"})["items"], 15,
                               "the resource")
        assert (resource["session_id"], resource["grade"]) == (lesson["id"], "四年级")
        assert resource["duration_seconds"] == available["duration_seconds"]
        assert not [item for item in resources.patrol_sessions(admin)["items"] if item["recording_key"] == key]
    assert available["key"] == key and available["recording_id"] == started["recording_id"]
    assert available["session_id"] == lesson["id"] and available["teacher_id"] == city.teachers[0]
    assert SEND_SECONDS - 2.5 <= available["duration_seconds"] <= SEND_SECONDS + 1.5, available
    assert [track["track"] for track in available["tracks"]] == ["audio", "camera"]
    assert available["bytes"] > 0 and available["files"]["hls"] == "index.m3u8"
    program = root / key / available["files"]["program_mp4"]
    probed = ffprobe(program)
    assert sorted(stream["codec_name"] for stream in probed["streams"]) == ["h264", "opus"]
    assert SEND_SECONDS - 2.5 <= float(probed["format"]["duration"]) <= SEND_SECONDS + 1.5, probed["format"]
    assert ffprobe(root / key / "index.m3u8")["streams"]  # the HLS playlist plays too


def test_switching_recording_off_while_live_finalizes_it_and_patrol_goes_on(recorded_relay: dict[str, Any]) -> None:
    """`PUT …/recording {"record": false}` mid-lesson: the kept recording ends and becomes available with what
    was recorded so far; a patrol-only one (keep false) takes over and is not kept when the lesson ends."""
    relay, admin, city, master = (recorded_relay[name] for name in ("relay", "admin", "city", "master"))
    events, root = recorded_relay["events"], recorded_relay["root"]
    with peers(limit_seconds=100) as processes:
        lesson = start_lesson(relay, admin, city, master)
        (kept,) = events.wait("recording.started", timeout=15)
        sender = send_media(relay, admin, lesson, master, 3 * SEND_SECONDS)
        processes.append(sender)
        time.sleep(SEND_SECONDS)
        switched = relay.set_recording(admin, lesson["id"], {"record": False})
        assert switched["record"] is False
        (ended,) = events.wait("recording.ended", timeout=10)
        assert ended["key"] == kept["key"] and ended["keep"] is True
        patrol = events.wait("recording.started", timeout=15, count=2)[1]
        assert patrol["keep"] is False and patrol["key"] != kept["key"]
        (available,) = events.wait("recording.available", timeout=60)
        assert available["key"] == kept["key"] and 2 <= available["duration_seconds"] <= SEND_SECONDS + 3
        assert ffprobe(root / kept["key"] / available["files"]["program_mp4"])["streams"]
        # The patrol-only recording is live HLS while it runs...
        playlist = root / patrol["key"] / "index.m3u8"
        wait_for(lambda: playlist.exists() and "#EXTINF" in playlist.read_text(), 20, "patrol HLS segments")
        relay.end_session(admin, lesson["id"])
        sender.kill()
        events.wait("recording.ended", timeout=10, count=2)
        # ...and nothing of it stays: no recording.available for it, its folder goes.
        wait_for(lambda: not (root / patrol["key"]).exists(), 30, "the patrol-only folder to go")
        events.wait("session.ended", timeout=5)
        assert [body["key"] for body in events.wait("recording.available", timeout=1)] == [kept["key"]]
        assert len(events.received["recording.available"]) == 1


def test_a_recorder_killed_mid_lesson_is_given_its_recording_again_and_the_lesson_keeps_a_gap(
    recorded_relay: dict[str, Any]
) -> None:
    """The recorder is killed (no finalizing) and comes back: the control plane's next push names the key
    again, the recorder continues it in a new part, and the published lesson is whole but for a gap."""
    relay, admin, city, master = (recorded_relay[name] for name in ("relay", "admin", "city", "master"))
    events, root, recorder = recorded_relay["events"], recorded_relay["root"], recorded_relay["recorder"]
    with peers(limit_seconds=100) as processes:
        lesson = start_lesson(relay, admin, city, master)
        (started,) = events.wait("recording.started", timeout=15)
        sender = send_media(relay, admin, lesson, master, 4 * SEND_SECONDS)
        processes.append(sender)
        time.sleep(SEND_SECONDS)
        recorder.kill()
        time.sleep(2)
        recorder.start()
        # Recording again: new segments after the restart, on the same key.
        playlist = root / started["key"] / "index.m3u8"
        before = playlist.read_text().count("#EXTINF") if playlist.exists() else 0
        wait_for(lambda: playlist.read_text().count("#EXTINF") > before + 1, 30, "segments after the restart")
        relay.end_session(admin, lesson["id"])
        sender.kill()
        (available,) = events.wait("recording.available", timeout=60)
    assert available["key"] == started["key"] and len(events.received["recording.started"]) == 1
    assert [gap["reason"] for gap in available["gaps"]] == ["recorder_restart"], available["gaps"]
    assert available["duration_seconds"] >= SEND_SECONDS, available
    probed = ffprobe(root / started["key"] / available["files"]["program_mp4"])
    assert sorted(stream["codec_name"] for stream in probed["streams"]) == ["h264", "opus"]


def test_a_data_plane_restarted_mid_lesson_leaves_a_gap_and_a_playable_recording(
    recorded_relay: dict[str, Any]
) -> None:
    """The relay's data plane is killed mid-lesson (a crash: it forgets every session) and comes back on the
    same ports: the control plane pushes the lesson again, media reaches the recorder again, and the published
    lesson is one playable file with the outage marked as a gap, not a corrupt or truncated one."""
    relay, admin, city, master = (recorded_relay[name] for name in ("relay", "admin", "city", "master"))
    events, root, plane = recorded_relay["events"], recorded_relay["root"], recorded_relay["plane"]
    with peers(limit_seconds=100) as processes:
        lesson = start_lesson(relay, admin, city, master, subject="物理", grade="八年级")
        (started,) = events.wait("recording.started", timeout=15)
        sender = send_media(relay, admin, lesson, master, 5 * SEND_SECONDS)
        processes.append(sender)
        playlist = root / started["key"] / "index.m3u8"
        wait_for(lambda: playlist.exists() and playlist.read_text().count("#EXTINF") >= 2, 20, "segments before")
        plane.process.kill()  # no chance to say goodbye
        plane.process.wait(timeout=10)
        time.sleep(3)
        restarted = start_dataplane("--control-port", str(plane.control_port), "--media-port", str(plane.media_port),
                                    "--rtcp-port", str(plane.rtcp_port), secret_file=str(root.parent /
                                                                                         "relay-control.secret"))
        restarted.control.close()
        try:
            before = playlist.read_text().count("#EXTINF")
            wait_for(lambda: playlist.read_text().count("#EXTINF") >= before + 3, 40, "segments after the restart")
            relay.end_session(admin, lesson["id"])
            sender.kill()
            (available,) = events.wait("recording.available", timeout=60)
        finally:
            stop_process(restarted.process)
    assert available["key"] == started["key"] and len(events.received["recording.started"]) == 1
    # The outage is marked (measured: one `source_changed` gap of ~7 s, the data plane's new SDP for the
    # recorder member), where the media stopped and resumed.
    assert len(available["gaps"]) == 1, available
    gap = available["gaps"][0]
    assert gap["reason"] in ("source_changed", "media_stopped", "ffmpeg_exit", "stall"), gap
    assert 0 < gap["start_seconds"] < gap["end_seconds"] and gap["end_seconds"] - gap["start_seconds"] >= 2, gap
    program = root / started["key"] / available["files"]["program_mp4"]
    probed = ffprobe(program)
    assert sorted(stream["codec_name"] for stream in probed["streams"]) == ["h264", "opus"]
    duration = float(probed["format"]["duration"])
    # The media before and after, without the outage (gaps take no playback time), and nowhere near the
    # absurd lengths a timestamp jump across the restart would make.
    assert 2 * SEND_SECONDS - 4 <= duration <= available["duration_seconds"] + 1.5, (duration, available)
    assert available["duration_seconds"] < (datetime.fromisoformat(available["ended_at"]) - datetime.fromisoformat(
        available["started_at"])).total_seconds(), available
    decoded = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-i", str(program),
                              "-enc_time_base:v", "-1", "-f", "null", "-"],
                             capture_output=True, timeout=60, check=False)
    assert decoded.returncode == 0 and b"corrupt" not in decoded.stderr.lower(), decoded.stderr[-2000:]
    resources = recorded_relay["resources"]
    (resource,) = wait_for(lambda: [item for item in resources.search_resources(admin, {"subject": "物理"})["items"]
                                    if item["session_id"] == lesson["id"]], 15, "the resource")
    assert resource["gaps"] and resource["grade"] == "八年级" and resource["school_id"] == city.schools[0]
    assert resource["classroom_id"] == master["id"] and resource["teacher_id"] == city.teachers[0]
    assert [track["track"] for track in resource["tracks"]] == ["audio", "camera"] and resource["date"]
