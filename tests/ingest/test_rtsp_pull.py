"""RTSP pull with real peers: GStreamer's RTSP server stands in for an IP camera (basic auth); the ingest pulls
it when the session's state names it, two receiving classrooms decode picture and sound through the data
plane; the camera is stopped (the ingest reconnects with back-off) and started again, and the branches decode
again on the same relay stream. The camera's password never leaves the ingest."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.relay.media_peers import run
from tests.relay.relay_harness import free_tcp_port, stop_process, wait_until

from .ingest_harness import (
    BRANCHES,
    SESSION,
    branch_ports,
    decoded_frames,
    ingest_entry,
    lesson_on_dataplane,
    start_decoder,
    write_branch_sdp,
)

FFMPEG = shutil.which("ffmpeg")
SYSTEM_PYTHON = "/usr/bin/python3"
CAMERA_SCRIPT = Path(__file__).with_name("rtsp_camera.py")
PASSWORD = "cam-pass-7Qx"  # an invented camera password: it must never show outside the ingest


def _gst_rtsp_server_available() -> bool:
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
         "from gi.repository import GstRtspServer"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    FFMPEG is None or not Path(SYSTEM_PYTHON).exists() or not _gst_rtsp_server_available(),
    reason="ffmpeg or GStreamer's RTSP server is not installed (make system-deps)")
DECODE_SECONDS = 3


def start_camera(port: int) -> subprocess.Popen:
    camera = subprocess.Popen([SYSTEM_PYTHON, str(CAMERA_SCRIPT), str(port), "recorder", PASSWORD],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = camera.stdout.readline() if camera.stdout else b""
    assert b"rtsp-camera ready" in line, (line, camera.stderr.read() if camera.stderr else b"")
    return camera


def decode_on_both_branches(tmp_path: Path, ports: dict[str, int], outputs: dict[str, list[dict]],
                            phase: str) -> dict[str, tuple]:
    assert FFMPEG is not None
    decoders = {branch: start_decoder(FFMPEG, write_branch_sdp(tmp_path / f"{branch}-{phase}.sdp", ports[branch],
                                                               outputs[branch]), DECODE_SECONDS)
                for branch in BRANCHES}
    results = {}
    for branch, decoder in decoders.items():
        returncode, stdout, stderr = run(decoder, DECODE_SECONDS + 12)
        results[branch] = (returncode, decoded_frames(stdout), stderr)
    return results


def assert_decoded(results: dict[str, tuple], phase: str) -> None:
    for branch, (returncode, frames, errors) in results.items():
        assert returncode == 0, f"{phase}, {branch}: decoder exited {returncode}: {errors}"
        # 3 s, joined mid-stream: pictures from the next keyframe on (≤ 1 s away, 25 a second), ≈ 47 AAC frames a
        # second from the start.
        assert frames[0] >= 40, f"{phase}, {branch}: {frames[0]} pictures ({errors})"
        assert frames[1] >= 90, f"{phase}, {branch}: {frames[1]} sound frames ({errors})"


def test_rtsp_camera_is_pulled_survives_a_restart_and_keeps_its_password(dataplane, ingest, tmp_path) -> None:
    camera_port = free_tcp_port()
    camera = start_camera(camera_port)
    ports = branch_ports()
    outputs = lesson_on_dataplane(dataplane, ports)
    url = f"rtsp://recorder:{PASSWORD}@127.0.0.1:{camera_port}/camera"
    try:
        reply = ingest.call("set_state", ingests=[ingest_entry(dataplane, "rtsp", rtsp_url=url)])
        assert reply["ingests"][0]["rtsp_url"] == f"rtsp://***@127.0.0.1:{camera_port}/camera"
        assert wait_until(lambda: ingest.stats()["ingests"][0]["connected"], 15), ingest.stats()
        assert_decoded(decode_on_both_branches(tmp_path, ports, outputs, "first"), "before the camera dropped")

        stop_process(camera)  # the camera drops off the network
        assert wait_until(lambda: not ingest.stats()["ingests"][0]["connected"], 10)
        assert wait_until(lambda: ingest.stats()["ingests"][0]["reconnects"] >= 2, 20), ingest.stats()
        during_outage = ingest.stats()["ingests"][0]
        # The camera's end of stream, then failed attempts to reach it, each told with the URL redacted.
        assert during_outage["exits"][-1] != 0 and during_outage["last_error"], during_outage
        assert PASSWORD not in during_outage["last_error"]

        camera = start_camera(camera_port)  # back on the same address
        assert wait_until(lambda: ingest.stats()["ingests"][0]["connected"], 20), ingest.stats()
        assert_decoded(decode_on_both_branches(tmp_path, ports, outputs, "again"), "after the camera came back")
        stats = ingest.stats()
        metrics = ingest.metrics()
        relay = dataplane.stats(SESSION)
    finally:
        stop_process(camera)
    (live,) = stats["ingests"]
    assert live["reconnects"] >= 2
    assert all(track["upstream_streams"] >= 2 for track in live["tracks"])  # two camera connections ...
    for track in relay["sessions"][SESSION]["tracks"]:
        assert len(track["layers"]) == 1, track  # ... one continuous stream (one SSRC) in the relay
    assert PASSWORD not in json.dumps(stats) and PASSWORD not in metrics
    ingest_log = ingest.stop()
    assert PASSWORD not in ingest_log and "rtsp://***@127.0.0.1" in ingest_log
