"""Real peers for the ingest tests: a data plane and an ingest process as subprocesses on 127.0.0.1, receiving
classrooms that decode what the relay sends them (ffmpeg, with the SDP the control plane's sdp.py writes)."""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from services.classroom_relay import tracks as track_shapes
from services.classroom_relay.dataplane.admission import issue_token
from services.classroom_relay.dataplane.protocol import ControlClient
from services.classroom_relay.sdp import Section, build_receiver_sdp
from tests.relay.relay_harness import (
    SECRET,
    DataPlane,
    free_tcp_port,
    free_udp_port_pair,
    start_relay_process,
    stop_process,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(rb"relay-ingest ready control=(\d+) metrics=(\d+) rtmp=(\d+)")
SESSION, MASTER = "session-1", "classroom-1"
BRANCHES = ("classroom-2", "classroom-3")
# What a recording classroom publishes: AAC-LC 48 kHz stereo (copied, mpeg4-generic) and its H.264 camera.
AUDIO = track_shapes.complete({"track": "audio", "kind": "audio", "codec": "aac", "clock_rate": 48000, "channels": 2})
CAMERA = track_shapes.complete({"track": "camera", "kind": "video", "layers_bps": [2_000_000]})
LESSON_TRACKS = (AUDIO, CAMERA)


@dataclass
class IngestProcess:
    process: subprocess.Popen
    control: ControlClient
    metrics_port: int
    rtmp_port: int

    def call(self, op: str, **fields: object) -> dict:
        reply = self.control.call(op, **fields)
        assert reply["ok"], f"ingest {op} refused: {reply}"
        return reply

    def stats(self) -> dict:
        return self.call("get_stats")["stats"]

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def stop(self) -> str:
        self.control.close()
        stop_process(self.process)
        return self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""


def start_ingest(control_secret: str, rtmp: bool = True) -> IngestProcess:
    metrics_port, control_port, rtmp_port = free_tcp_port(), free_tcp_port(), free_tcp_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RELAY_CONTROL_SECRET": control_secret}
    process, _ready = start_relay_process(
        ["services.classroom_relay.ingest", "--control-port", str(control_port), "--metrics-port", str(metrics_port),
         "--rtmp-listen", "127.0.0.1", "--rtmp-port", str(rtmp_port), *([] if rtmp else ["--no-rtmp"])],
        env, READY, "ingest",
    )  # fmt: skip
    return IngestProcess(process, ControlClient(port=control_port, secret=control_secret), metrics_port, rtmp_port)


def lesson_on_dataplane(plane: DataPlane, branch_ports: dict[str, int]) -> dict[str, list[dict]]:
    """The master publishes LESSON_TRACKS; every branch receives both on consecutive even ports. Returns each
    branch's confirmed outputs."""
    def relay_tracks() -> list[dict]:
        return [{"track": t["track"], "kind": t["kind"], "source": t["source"], "clock_rate": t["clock_rate"],
                 "layers_bps": t["layers_bps"]} for t in LESSON_TRACKS]

    members = [{"classroom": MASTER, "tracks": relay_tracks(), "senders": []}]
    for branch, port in branch_ports.items():
        members.append({"classroom": branch, "tracks": [], "senders": [], "receive": {
            "host": "127.0.0.1", "budget_bytes_per_second": 1_250_000,
            "outputs": [{"source_classroom": MASTER, "track": t["track"], "port": port + 2 * index}
                        for index, t in enumerate(LESSON_TRACKS)]}})
    reply = plane.call("set_state", secrets=[SECRET], sessions=[{"session": SESSION, "members": members}])
    assert not reply["refused_outputs"], reply
    return {branch: [o for o in reply["outputs"] if o["classroom"] == branch] for branch in branch_ports}


def ingest_entry(plane: DataPlane, kind: str, ttl: float = 120, **extra: object) -> dict:
    token = issue_token(SECRET.encode(), SESSION, MASTER, ttl)
    return {"session": SESSION, "classroom": MASTER, "kind": kind, "token": token,
            "media_address": ["127.0.0.1", plane.media_port],
            "tracks": [{"track": t["track"], "kind": t["kind"], "codec": t["codec"], "payload_type": t["payload_type"],
                        "clock_rate": t["clock_rate"]} for t in LESSON_TRACKS], **extra}


def write_branch_sdp(path: Path, base_port: int, outputs: list[dict]) -> Path:
    by_track = {output["track"]: output for output in outputs}
    sections = [Section(port=base_port + 2 * index, track=track, label=f"{MASTER}/{track['track']}",
                        relay_rtcp=tuple(by_track[track["track"]]["relay_address"]),
                        ssrc=by_track[track["track"]]["ssrc"])
                for index, track in enumerate(LESSON_TRACKS)]
    path.write_text(build_receiver_sdp(relay_host="127.0.0.1", sections=sections))
    return path


def start_decoder(ffmpeg: str, sdp: Path, seconds: float) -> subprocess.Popen:
    """A receiving classroom: decodes picture and sound for `seconds` and prints one framecrc line per frame."""
    return subprocess.Popen(
        [ffmpeg, "-nostdin", "-v", "error", "-protocol_whitelist", "file,udp,rtp", "-i", str(sdp),
         "-map", "0:v", "-map", "0:a", "-t", str(seconds), "-f", "framecrc", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def decoded_frames(framecrc: str) -> Counter:
    """Decoded frames per output stream (0: picture, 1: sound)."""
    counts: Counter = Counter()
    for line in framecrc.splitlines():
        if line and not line.startswith("#"):
            counts[int(line.split(",")[0])] += 1
    return counts


def rtmp_publisher(ffmpeg: str, url: str, seconds: float) -> subprocess.Popen:
    """ffmpeg standing in for a recording host: H.264 test pattern + a 440 Hz tone in AAC, pushed over RTMP."""
    return subprocess.Popen(
        [ffmpeg, "-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
         "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25", "-b:v", "1500k",
         "-c:a", "aac", "-ar", "48000", "-ac", "2", "-b:a", "128k", "-f", "flv", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def branch_ports() -> dict[str, int]:
    ports = {}
    for branch in BRANCHES:
        while True:  # two consecutive pairs: audio on port, camera on port + 2
            port = free_udp_port_pair()
            if free_udp_port_pair_at(port + 2):
                ports[branch] = port
                break
    return ports


def free_udp_port_pair_at(port: int) -> bool:
    import socket

    sockets = []
    try:
        for candidate in (port, port + 1):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", candidate))
        return True
    except OSError:
        return False
    finally:
        for sock in sockets:
            sock.close()


def exported_metric_names() -> set[str]:
    """The metric families the ingest exports with one classroom ingest in its state, as a scrape shows them
    (tests/ops checks every metric the alert rules use is exported by someone)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from services.classroom_relay.ingest.metrics import IngestCollector
    from services.classroom_relay.ingest.supervisor import IngestSpec, Supervisor

    supervisor = Supervisor("ffmpeg", "rtmp://127.0.0.1:1/live")
    track = {"track": "camera", "kind": "video", "codec": "h264", "payload_type": 96, "clock_rate": None}
    supervisor.set_state([IngestSpec(SESSION, MASTER, "rtmp", issue_token(SECRET.encode(), SESSION, MASTER, 60),
                                     ("127.0.0.1", 9), (track,))])
    try:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(IngestCollector(supervisor.snapshot, lambda: True))
        page = generate_latest(registry).decode()
    finally:
        supervisor.stop()
    return {line.split("{")[0].split(" ")[0] for line in page.splitlines() if line and not line.startswith("#")}
