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
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Consumer, Queue
from nameko.standalone.rpc import ClusterRpcProxy

from services.accounts.service import AccountsService
from services.classroom_relay.models import MBIT
from services.classroom_relay.service import ClassroomRelayService
from services.common.events import event_exchange, event_type_of
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


@pytest.fixture
def relay_pair(tmp_path: Path) -> Iterator[tuple[DataPlane, int, Path]]:
    """A data plane and the recorder beside it, sharing the control secret the data plane wrote (as `make run`
    starts them): (data plane, recorder control port, recordings root)."""
    secret_file = str(tmp_path / "relay-control.secret")
    plane = start_dataplane(secret_file=secret_file)
    plane.control.close()  # the control plane under test is its only client
    root = tmp_path / "recordings"
    media = free_port_block(8)
    control_port = free_tcp_port()
    recorder = subprocess.Popen(
        [sys.executable, "-m", "services.classroom_relay.recorder", "--control-port", str(control_port),
         "--metrics-port", "0", "--control-secret-file", secret_file, "--root", str(root),
         "--media-host", "127.0.0.1", "--media-ports", f"{media}-{media + 15}"],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        line = b""
        while time.monotonic() < deadline and recorder.poll() is None and not READY.search(line):
            line = recorder.stdout.readline() if recorder.stdout else b""
        assert READY.search(line), f"the recorder did not start: {line!r}"
        yield plane, control_port, root
    finally:
        if recorder.poll() is None:
            recorder.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            recorder.wait(timeout=20)
        stop_process(recorder)
        recorder_errors = recorder.stderr.read().decode(errors="replace") if recorder.stderr else ""
        stop_process(plane.process)
        plane_errors = plane.process.stderr.read().decode(errors="replace") if plane.process.stderr else ""
        assert "Traceback" not in recorder_errors, recorder_errors
        assert "Traceback" not in plane_errors, plane_errors


def ffprobe(path: Path) -> dict[str, Any]:
    assert FFPROBE is not None
    result = subprocess.run([FFPROBE, "-v", "error", "-print_format", "json", "-show_streams", "-show_format",
                             str(path)], capture_output=True, timeout=30, check=True)
    return json.loads(result.stdout)


def wait_for(fetch: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = fetch()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_a_master_teacher_lesson_is_recorded_and_becomes_available(
    runner_factory: Any, service_config: dict[str, Any], relay_pair: tuple[DataPlane, int, Path], unique: Any
) -> None:
    plane, recorder_port, root = relay_pair
    city = invent_bureau(service_config, [100 * MBIT])
    admin = city.admin
    config = {**service_config, "RELAY_DATAPLANES": f"relay-0=127.0.0.1:{plane.control_port}",
              "RELAY_RECORDERS": f"relay-0=127.0.0.1:{recorder_port}",
              "RELAY_CONTROL_SECRET_FILE": str(root.parent / "relay-control.secret"),
              "RELAY_JOIN_SECRETS": "recording-secret", "RELAY_STATS_INTERVAL": 0.2, "RELAY_RECONCILE_INTERVAL": 1}
    queue = Queue(unique("recording-subscriber-"), exchange=event_exchange("classroom_relay"),
                  routing_key="#", durable=False, auto_delete=True)
    received: dict[str, list] = {}
    with Connection(config["AMQP_URI"]) as connection, peers(limit_seconds=100) as processes:
        queue(connection).declare()
        runner_factory(config, ClassroomRelayService, AccountsService).start()

        def keep(_body: Any, message: Any) -> None:
            received.setdefault(event_type_of(message.delivery_info["routing_key"]), []).append(message)
            message.ack()

        def drain(event: str, timeout: float) -> dict:
            """The body of the first `event` on the relay's exchange, checked against the AsyncAPI document."""
            deadline = time.monotonic() + timeout
            while not received.get(event) and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=0.5)
            assert received.get(event), f"no {event} within {timeout} s (got {sorted(received)})"
            message = received[event][0]
            assert contract_errors("classroom_relay.events", message.delivery_info["routing_key"], message.headers,
                                   message.body) == []
            return json.loads(message.body)

        consumer = Consumer(connection, [queue], accept=["json"], callbacks=[keep])
        consumer.consume()
        with ClusterRpcProxy(config, timeout=10) as rpc:
            relay = rpc.classroom_relay
            master = relay.create_classroom(admin, {
                "school_id": city.schools[0], "name": "录播教室", "kind": "broadcasting",
                "tracks": [{"track": "audio", "kind": "audio", "codec": "opus"},
                           {"track": "camera", "kind": "video", "layers_bps": [800_000]}]})
            now = datetime.now(UTC)
            lesson = relay.create_session(admin, {
                "kind": "master_teacher", "title": "四年级数学", "master_classroom_id": master["id"],
                "teacher_id": city.teachers[0], "subject": "数学", "grade": "四年级", "starts_at": now.isoformat(),
                "ends_at": (now + timedelta(minutes=40)).isoformat()})
            assert lesson["record"] is True  # 名师课堂: recorded unless switched off
            relay.start_session(admin, lesson["id"])

            started = drain("recording.started", timeout=15)
            key = started["key"]
            assert (started["session_id"], started["keep"], started["subject"], started["grade"]) == (
                lesson["id"], True, "数学", "四年级")
            assert started["school_id"] == city.schools[0] and started["classroom_id"] == master["id"]
            shown = wait_for(lambda: relay.get_session(admin, lesson["id"])["recording"], 10, "the recording")
            assert shown["key"] == key and shown["state"] == "recording"

            token = relay.issue_join_token(admin, lesson["id"], master["id"])
            media = (token["media_address"][0], token["media_address"][1])
            base = free_port_block(2)
            ports = {"camera": base, "audio": base + 2}
            for track, port in ports.items():
                relay.register_sender(admin, lesson["id"], master["id"],
                                      {"host": "127.0.0.1", "port": port, "track": track})
            time.sleep(0.5)  # the registrations reach the data plane before the first packet
            sender = encoder(media, SEND_SECONDS,
                             [VideoSource("camera", "testsrc2=size=320x240:rate=25", "800k", ports["camera"])],
                             AudioSource(ports["audio"]))
            processes.append(sender)
            sending_since = time.monotonic()
            # The data plane forwards both tracks to the recorder member, not counted as a classroom.
            outputs = wait_for(lambda: [output for output in (plane.stats()["sessions"].get(
                f"session-{lesson['id']}") or {}).get("outputs", []) if output["classroom"].startswith("recorder-")
                and output.get("bytes_out", 0) > 0], 10, "media towards the recorder")
            assert {output["classroom"] for output in outputs} == {f"recorder-{lesson['id']}"}
            time.sleep(max(0.0, sending_since + SEND_SECONDS - time.monotonic()))
            assert sender.poll() is None, sender.stderr.read() if sender.stderr else ""
            relay.end_session(admin, lesson["id"])  # while it still sends: the recorder stops at the end
            sender.kill()

            ended = drain("recording.ended", timeout=10)
            assert (ended["key"], ended["state"]) == (key, "finalizing")
            available = drain("recording.available", timeout=60)
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
    # Made available once, then forgotten by the recorder; the files stay.
    assert len(received["recording.available"]) == 1 and program.exists()
