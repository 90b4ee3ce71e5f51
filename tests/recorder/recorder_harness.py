"""The recorder with real peers: the recorder process itself, ffmpeg senders of H.264 + Opus RTP (what the data
plane forwards it), ffprobe and ffmpeg decoding what it wrote."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from services.classroom_relay.dataplane.protocol import ControlClient
from services.classroom_relay.sdp import Section, build_receiver_sdp
from tests.activities.broker import wait_for
from tests.relay.relay_harness import free_tcp_port, start_relay_process

REPO_ROOT = Path(__file__).resolve().parents[2]
FFMPEG = shutil.which("ffmpeg")
FFPROBE = shutil.which("ffprobe")
SECRET = "recorder-test-control-secret"
READY = re.compile(rb"relay-recorder ready control=(\d+)")
CAMERA = {"track": "camera", "kind": "video", "codec": "h264", "payload_type": 96, "clock_rate": 90_000}
AUDIO = {"track": "audio", "kind": "audio", "codec": "opus", "payload_type": 111, "clock_rate": 48_000, "channels": 2}
COURSEWARE = {"track": "courseware", "kind": "video", "codec": "h264", "payload_type": 96, "clock_rate": 90_000}


def free_port_block(size: int = 8) -> int:
    """An even base port with base..base+size-1 all free for UDP on 127.0.0.1."""
    for _ in range(500):
        base = random.randrange(30_000, 60_000, 2)
        sockets = []
        try:
            for port in range(base, base + size):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(probe)
                probe.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
    raise RuntimeError("no free block of UDP ports")


wait_until = partial(wait_for, interval=0.2)  # (predicate, timeout, what)


def recording_entry(key: str, base: int, keep: bool = True, courseware: bool = False,
                    session: str = "session-rec-1") -> dict:
    """A set_state entry as the control plane sends it: the relay's SDP for the recorder member (sdp.py) and
    the tracks on base, base + 2, base + 4."""
    tracks = [CAMERA, AUDIO, *([COURSEWARE] if courseware else [])]
    sections = [Section(base + 2 * index, track, f"master-room/{track['track']}", ("127.0.0.1", 9))
                for index, track in enumerate(tracks)]
    sdp = build_receiver_sdp(relay_host="127.0.0.1", sections=sections, session_name=f"recording {key}")
    return {"key": key, "session": session, "keep": keep, "sdp": sdp,
            "tracks": [{"track": t["track"], "kind": t["kind"], "source": "master-room", "codec": t["codec"],
                        "port": base + 2 * index} for index, t in enumerate(tracks)]}


def start_sender(base: int, seconds: float, courseware: bool = False, bitrate: str = "800k") -> subprocess.Popen:
    """ffmpeg encoding a test picture (1 s GOP) and a tone, sending H.264 and Opus RTP as the relay forwards
    them to the recorder: camera to base, audio to base + 2, courseware to base + 4."""
    assert FFMPEG
    command = [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
               "-f", "lavfi", "-i", f"testsrc=size=640x360:rate=25:duration={seconds}",
               "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    if courseware:
        command += ["-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=10:duration={seconds}"]
    video = ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25", "-bf", "0",
             "-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate, "-payload_type", "96"]
    command += ["-map", "0:v", *video, "-ssrc", "4001", "-f", "rtp", f"rtp://127.0.0.1:{base}?pkt_size=1200",
                "-map", "1:a", "-c:a", "libopus", "-b:a", "64k", "-payload_type", "111", "-ssrc", "4002",
                "-f", "rtp", f"rtp://127.0.0.1:{base + 2}?pkt_size=1200"]
    if courseware:
        command += ["-map", "2:v", *video[:-2], "-g", "10", "-payload_type", "96", "-ssrc", "4003", "-f", "rtp",
                    f"rtp://127.0.0.1:{base + 4}?pkt_size=1200"]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass
class RecorderProcess:
    process: subprocess.Popen
    control: ControlClient
    root: Path
    metrics_port: int

    def call(self, op: str, **fields: Any) -> dict:
        return self.control.call(op, **fields)

    def recording(self, key: str) -> dict | None:
        return next((entry for entry in self.call("get_stats")["recordings"] if entry["key"] == key), None)

    def wait_state(self, key: str, states: tuple[str, ...], timeout: float = 30) -> dict:
        return wait_until(lambda: (entry := self.recording(key)) and entry["state"] in states and entry,
                          timeout, f"{key} in {states}")

    def ffmpeg_children(self, marker: str = "") -> list[int]:
        """The pids of the recorder's ffmpeg processes whose command line contains `marker`."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            parent = int(stat.rpartition(")")[2].split()[1])
            if parent == self.process.pid and "ffmpeg" in command and marker in command:
                found.append(int(entry.name))
        return found

    def stop(self) -> str:
        self.control.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""


def start_recorder(root: Path, media_base: int, *extra: str, stall_seconds: int = 3) -> RecorderProcess:
    control_port, metrics_port = free_tcp_port(), free_tcp_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process, _ready = start_relay_process(
        ["services.classroom_relay.recorder", "--control-port", str(control_port),
         "--metrics-port", str(metrics_port), "--control-secret", SECRET, "--root", str(root),
         "--media-ports", f"{media_base}-{media_base + 8}", "--stall-seconds", str(stall_seconds),
         "--min-free-bytes", "1", "--low-free-bytes", "2", *extra],
        env, READY, "recorder",
    )  # fmt: skip
    return RecorderProcess(process, ControlClient(port=control_port, secret=SECRET), root, metrics_port)


def ffprobe(path: Path) -> dict:
    assert FFPROBE
    result = subprocess.run([FFPROBE, "-v", "error", "-print_format", "json", "-show_streams", "-show_format",
                             str(path)], capture_output=True, timeout=30, check=True)
    return json.loads(result.stdout)


def decode_errors(path: Path) -> str:
    """What `ffmpeg -v error -i <path> -f null -` prints: empty when every frame decodes.

    For an MP4 the frames keep their own time base on the way to the null muxer: a sender's first two frames
    after a restart can be 25 ms apart (its RTP timestamps), which the default 1/25 s output time base rounds
    onto one tick and the null muxer reports as non-monotonic — a complaint about the check's own rounding,
    not about the file (players and decoders take the timestamps as they are)."""
    assert FFMPEG
    time_base = ["-enc_time_base:v", "-1"] if path.suffix == ".mp4" else []
    result = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), *time_base,
                             "-f", "null", "-"], capture_output=True, timeout=60, check=False)
    return (result.stderr.decode(errors="replace") + ("" if result.returncode == 0 else f" rc={result.returncode}"))


def manifest(root: Path, key: str) -> dict:
    return json.loads((root / key / "manifest.json").read_text())


def exported_metric_names() -> set[str]:
    """The metric families the recorder exports, as a scrape shows them (tests/ops checks every metric the alert
    rules use is exported by someone)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from services.classroom_relay.recorder.metrics import RecorderCollector

    snapshot = {"guard": "ok", "active": 0, "storage": {"free_bytes": 1, "total_bytes": 2},
                "counters": {"segments": {"program": 0}, "gaps": {}, "restarts": 0, "bytes": 0, "refused": {},
                             "latency_buckets": [0] * 6, "latency_count": 0, "latency_sum": 0.0}}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RecorderCollector(lambda: snapshot))
    page = generate_latest(registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in page.splitlines() if line and not line.startswith("#")}
