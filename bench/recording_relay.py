"""Part of ``make bench-recording``: the relay data plane's CPU per forwarded packet with the recorder attached
to the session (a receive-only member whose outputs go to the recorder's ports) and without, in the same run.

One lesson: the master's camera, courseware and audio (the benchmark's pre-encoded file, `ffmpeg -re -c copy`
to RTP) enter the data plane through the ingest's RTP hops (ingest/rtp_hop.py: the admission hello, as a
classroom's encoder does it), go out to --branches receiving classrooms (UDP sinks drained by this process)
and, in the `recorder` rounds, to a real recorder process too. Rounds alternate (without, with, without, …);
the data plane's user + system CPU over each round's window is divided by the packets it sent (its own
`packets_out` counters), and the medians are reported.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from services.classroom_relay import tracks as track_shapes
from services.classroom_relay.dataplane.admission import issue_token
from services.classroom_relay.dataplane.protocol import ControlClient
from services.classroom_relay.ingest.rtp_hop import TrackHop
from services.classroom_relay.sdp import Section, build_receiver_sdp

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(rb"relay-dataplane ready media=([\d.]+):(\d+) rtcp=(\d+) control=(\d+)")
JOIN_SECRET = "bench-recording-join-secret"
SESSION, MASTER = "bench-session", "bench-master"
TRACKS = (
    track_shapes.complete({"track": "camera", "kind": "video", "layers_bps": [3_400_000]}),
    track_shapes.complete({"track": "audio", "kind": "audio", "codec": "opus", "clock_rate": 48_000, "channels": 2}),
    track_shapes.complete({"track": "courseware", "kind": "video", "layers_bps": [500_000]}),
)
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _packets_out(value: Any) -> int:
    if isinstance(value, dict):
        return sum(v if k == "packets_out" and isinstance(v, int) else _packets_out(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_packets_out(item) for item in value)
    return 0


def _drain(sinks: list[socket.socket], stop: threading.Event) -> None:
    while not stop.is_set():
        for sink in select.select(sinks, [], [], 0.2)[0]:
            try:
                while True:
                    sink.recv(2048, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass


def _start_dataplane(secret_file: str) -> tuple[subprocess.Popen, int, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RELAY_CONTROL_SECRET_FILE": secret_file}
    env.pop("RELAY_CONTROL_SECRET", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "services.classroom_relay.dataplane", "--media-port", "0", "--control-port", "0",
         "--metrics-port", "0"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    match = READY.search(process.stdout.readline())
    if match is None:
        process.kill()
        raise RuntimeError("the data plane did not start")
    return process, int(match.group(2)), int(match.group(4))


def relay_rounds(source: Path, ffmpeg: str, recorder_command: list[str], recorder_secret: str, media_base: int,
                 seconds: int, rounds: int, branches: int) -> dict:
    scratch = tempfile.mkdtemp(prefix="bench-relay-", dir=ROOT / "var" / "bench")
    plane, media_port, control_port = _start_dataplane(os.path.join(scratch, "control.secret"))
    control = ControlClient(port=control_port, secret=Path(scratch, "control.secret").read_text().strip(), timeout=10)
    sinks = []
    for _ in range(branches * len(TRACKS)):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sink.bind(("127.0.0.1", 0))
        sinks.append(sink)
    stop = threading.Event()
    drainer = threading.Thread(target=_drain, args=(sinks, stop), daemon=True)
    drainer.start()
    token = issue_token(JOIN_SECRET.encode(), SESSION, MASTER, 3600)
    hops = [TrackHop(t["track"], t["kind"], t["clock_rate"], token, ("127.0.0.1", media_port)) for t in TRACKS]
    recorder = sender = None
    results: dict[str, list[float]] = {"without": [], "with": []}
    shares: dict[str, list[float]] = {"without": [], "with": []}
    segments_recorded = 0
    try:
        assert control.call("set_secrets", secrets=[JOIN_SECRET])["ok"]
        for hop in hops:
            hop.start()
        recorder = subprocess.Popen([*recorder_command, "--media-ports", f"{media_base}-{media_base + 8}"],
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert recorder.stdout is not None
        recorder_port = int(re.search(rb"control=(\d+)", recorder.stdout.readline()).group(1))  # type: ignore[union-attr]
        recorder_control = ControlClient(port=recorder_port, secret=recorder_secret, timeout=10)
        sender = subprocess.Popen(
            [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-t", str(rounds * (seconds + 8) + 20),
             "-i", str(source),
             *[arg for index, (stream, hop) in enumerate(zip(("0:v:0", "0:a:0", "0:v:1"), hops, strict=True))
               for arg in ("-map", stream, "-c", "copy", "-payload_type", str(TRACKS[index]["payload_type"]),
                           "-f", "rtp",
                           f"rtp://127.0.0.1:{hop.local_port}?pkt_size=1200")]],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        fields = ("track", "kind", "source", "clock_rate", "layers_bps")
        master = {"classroom": MASTER, "senders": [], "tracks": [{k: t[k] for k in fields} for t in TRACKS]}
        branch_members = [
            {"classroom": f"bench-branch-{number}", "tracks": [], "senders": [], "receive": {
                "host": "127.0.0.1", "budget_bytes_per_second": 1_250_000,
                "outputs": [{"source_classroom": MASTER, "track": t["track"],
                             "port": sinks[number * len(TRACKS) + index].getsockname()[1]}
                            for index, t in enumerate(TRACKS)]}} for number in range(branches)]
        recorder_member = {"classroom": "recorder-bench", "tracks": [], "senders": [], "receive": {
            "host": "127.0.0.1", "budget_bytes_per_second": 2_500_000,
            "outputs": [{"source_classroom": MASTER, "track": t["track"], "port": media_base + 2 * index}
                        for index, t in enumerate(TRACKS)]}}
        sections = [Section(media_base + 2 * index, t, f"{MASTER}/{t['track']}") for index, t in enumerate(TRACKS)]
        recording = {"key": "rec-bench-relay", "session": SESSION, "keep": False,
                     "sdp": build_receiver_sdp(relay_host="127.0.0.1", sections=sections),
                     "tracks": [{"track": t["track"], "kind": t["kind"], "codec": t["codec"], "source": MASTER,
                                 "port": media_base + 2 * index} for index, t in enumerate(TRACKS)]}
        for number in range(2 * rounds):
            attached = number % 2 == 1
            members = [master, *branch_members, *([recorder_member] if attached else [])]
            reply = control.call("set_state", secrets=[JOIN_SECRET], sessions=[{"session": SESSION,
                                                                                 "members": members}])
            assert reply["ok"], reply
            recorder_control.call("set_state", recordings=[recording] if attached else [])
            time.sleep(4)  # the new state settles (the recorder's ffmpeg starts, keyframes flow)
            cpu0, packets0 = _cpu(plane.pid), _packets_out(control.call("get_stats")["stats"])
            time.sleep(seconds)
            cpu1, packets1 = _cpu(plane.pid), _packets_out(control.call("get_stats")["stats"])
            if packets1 > packets0:
                results["with" if attached else "without"].append((cpu1 - cpu0) / (packets1 - packets0) * 1e6)
                shares["with" if attached else "without"].append((cpu1 - cpu0) / seconds)
            if attached:  # the recorder really got the lesson: segments written from what the data plane sent
                stats = recorder_control.call("get_stats")["recordings"]
                segments_recorded += sum(entry["segments"] or 0 for entry in stats)
        recorder_control.close()
    finally:
        stop.set()
        for process in (sender, recorder, plane):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        for hop in hops:
            hop.stop()
        for sink in sinks:
            sink.close()
        control.close()
        subprocess.run(["rm", "-rf", scratch], check=False)
    return {name: statistics.median(values) if values else float("nan") for name, values in results.items()} | {
        "rounds": rounds, "branches": branches, "segments_recorded": segments_recorded,
        "cpu_share_without": statistics.median(shares["without"]) if shares["without"] else float("nan"),
        "cpu_share_with": statistics.median(shares["with"]) if shares["with"] else float("nan")}
