"""Benchmark: the relay data plane forwarding lessons with the recorder attached vs without
(``make bench-recording-relay``; issue 16: "the relay's forwarding figure with the recorder attached vs without,
in the same run").

S sessions at once, each a master classroom sending camera H.264 ~3.4 Mbit/s, courseware H.264 ~0.5 Mbit/s and
Opus 64 kbit/s (bench/recording.py's source, `ffmpeg -re -c copy` to RTP from registered source ports) to B
receiving classrooms (UDP sinks drained by this process). Rounds alternate: without the recorder, then with it —
the recorder as the control plane attaches it (services/classroom_relay/recordings.py: a receive-only member
per session, the relay's own budget, the recorder's SDP and set_state), the real recorder process writing HLS
and MP4. Per round, over a window after warm-up: the data plane's forwarded packets/s and its CPU (user +
system) per 1000 forwarded packets and as a share of one core, and, with the recorder, the recorder's CPU
(with its ffmpeg children) per session and the segment gaps of the recordings (must be 0). Medians over the
rounds and the with/without ratios. Everything on 127.0.0.1, bounded in rounds and seconds (~2.5 min).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import secrets
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from recording import FFMPEG, SOURCE, cpu_and_rss, encode_source, family  # noqa: E402

from services.classroom_relay import recordings, tracks  # noqa: E402
from services.classroom_relay.dataplane.admission import issue_token  # noqa: E402
from services.classroom_relay.dataplane.protocol import ControlClient  # noqa: E402
from services.classroom_relay.sdp import Section, build_receiver_sdp  # noqa: E402

DATAPLANE_READY = re.compile(rb"relay-dataplane ready media=([\d.]+):(\d+) rtcp=(\d+) control=(\d+)")
RECORDER_READY = re.compile(rb"relay-recorder ready control=(\d+)")
CONTROL_SECRET = secrets.token_hex(16)
JOIN_SECRET = secrets.token_hex(16)
MASTER_TRACKS = [tracks.complete(track) for track in (
    {"track": "camera", "kind": "video", "codec": "h264", "payload_type": 96, "layers_bps": [3_400_000]},
    {"track": "audio", "kind": "audio", "codec": "opus", "payload_type": 97},
    {"track": "courseware", "kind": "video", "codec": "h264", "payload_type": 96, "layers_bps": [500_000]},
)]
SOURCE_STREAMS = {"camera": "0:v:0", "audio": "0:a:0", "courseware": "0:v:1"}  # bench/recording.py's source
WARMUP_SECONDS = 4.0
KEYS = itertools.count(900_000)


def free_udp_block(size: int) -> int:
    for _ in range(500):
        base = secrets.randbelow(20_000) * 2 + 20_000
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + size):
                    stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)).bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError("no free block of UDP ports")


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(command: list[str], ready: re.Pattern[bytes], env: dict[str, str]) -> tuple[subprocess.Popen, re.Match]:
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    line = b""
    while time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline() if process.stdout else b""
        match = ready.search(line)
        if match:
            return process, match
    process.kill()
    raise RuntimeError(f"{command[2]} did not start: {line!r}")


class Sinks:
    """The receiving classrooms: UDP sockets drained by one thread (counted, never inspected)."""

    def __init__(self, count_ports: int) -> None:
        self.base = free_udp_block(count_ports)
        self.sockets = []
        for port in range(self.base, self.base + count_ports):
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sink.bind(("127.0.0.1", port))
            sink.setblocking(False)
            self.sockets.append(sink)
        self.running = True
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        buffer = bytearray(2048)
        while self.running:
            readable, _, _ = select.select(self.sockets, [], [], 0.2)
            for sink in readable:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        sink.recv_into(buffer)

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=2)
        for sink in self.sockets:
            sink.close()


def session_state(number: int, branches: int, sinks: Sinks, source_ports: dict[str, int],
                  recorder: tuple[str, int] | None) -> dict[str, Any]:
    """One session in the data plane's terms, as services/classroom_relay/dataplane_state.py builds it."""
    session, master = f"session-{number}", f"classroom-m{number}"
    token = issue_token(JOIN_SECRET.encode(), session, master, 3600)
    wire = [{key: track[key] for key in ("track", "kind", "source", "clock_rate", "codec", "payload_type",
                                          "channels", "layers_bps", "bps")} for track in MASTER_TRACKS]
    members: list[dict[str, Any]] = [{
        "classroom": master, "tracks": wire,
        "senders": [{"track": name, "token": token, "address": ["127.0.0.1", port]}
                    for name, port in source_ports.items()]}]
    for branch in range(branches):
        first = sinks.base + 2 * len(MASTER_TRACKS) * (number * branches + branch)
        members.append({"classroom": f"classroom-b{number}-{branch}", "tracks": [], "senders": [], "receive": {
            "host": "127.0.0.1", "budget_bytes_per_second": 10_000_000 / 8,
            "outputs": [{"source_classroom": master, "track": track["track"], "port": first + 2 * index}
                        for index, track in enumerate(MASTER_TRACKS)]}})
    if recorder is not None:  # recordings.recorder_member, with the same budget rule
        host, base = recorder
        members.append({"classroom": f"recorder-{number}", "tracks": [], "senders": [], "receive": {
            "host": host, "budget_bytes_per_second": recordings.recorder_budget_bps(MASTER_TRACKS) / 8,
            "outputs": [{"source_classroom": master, "track": track["track"], "port": base + 2 * index}
                        for index, track in enumerate(MASTER_TRACKS)]}})
    return {"session": session, "members": members}


def recorder_entry(number: int, base: int, key: str) -> dict[str, Any]:
    """What recordings.recorder_state sends for one session: its SDP (sdp.py) and tracks at base + 2*i."""
    sections = [Section(base + 2 * index, track, f"classroom-m{number}/{track['track']}")
                for index, track in enumerate(MASTER_TRACKS)]
    return {"key": key, "session": f"session-{number}", "keep": True,
            "sdp": build_receiver_sdp(relay_host="127.0.0.1", sections=sections),
            "tracks": [{"track": track["track"], "kind": track["kind"], "codec": track["codec"],
                        "source": track["source"], "port": base + 2 * index}
                       for index, track in enumerate(MASTER_TRACKS)]}


def sender(media: tuple[str, int], ports: dict[str, int], seconds: float) -> subprocess.Popen:
    command = [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-t", str(seconds), "-i", str(SOURCE)]
    for name, port in ports.items():
        payload_type = next(track["payload_type"] for track in MASTER_TRACKS if track["track"] == name)
        command += ["-map", SOURCE_STREAMS[name], "-c", "copy", "-payload_type", str(payload_type), "-f", "rtp",
                    f"rtp://{media[0]}:{media[1]}?localport={port}&pkt_size=1200"]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def forwarded_packets(stats: dict[str, Any]) -> int:
    return sum(int(output.get("packets_out", 0)) for session in stats["sessions"].values()
               for output in session.get("outputs", []))


def one_round(dataplane: tuple[subprocess.Popen, ControlClient, tuple[str, int]],
              recorder: tuple[subprocess.Popen, ControlClient, int] | None, sessions: int, branches: int,
              seconds: float, sinks: Sinks) -> dict[str, float]:
    process, control, media = dataplane
    source_base = free_udp_block(2 * len(MASTER_TRACKS) * sessions)
    ports = [{track["track"]: source_base + 2 * (len(MASTER_TRACKS) * number + index)
              for index, track in enumerate(MASTER_TRACKS)} for number in range(sessions)]
    recorder_bases = [recorder[2] + 8 * number for number in range(sessions)] if recorder else []
    state = [session_state(number, branches, sinks, ports[number],
                           ("127.0.0.1", recorder_bases[number]) if recorder else None)
             for number in range(sessions)]
    reply = control.call("set_state", secrets=[JOIN_SECRET], sessions=state)
    assert reply["ok"] and not reply.get("refused_outputs") and not reply.get("refused_senders"), reply
    if recorder:
        # A key is one recording for good (the recorder refuses a finished one): new keys every round.
        entries = [recorder_entry(number, recorder_bases[number], f"rec-{next(KEYS)}") for number in range(sessions)]
        answer = recorder[1].call("set_state", recordings=entries)
        assert answer["ok"] and not answer["refused"], answer
    senders = [sender(media, ports[number], WARMUP_SECONDS + seconds + 5) for number in range(sessions)]
    try:
        time.sleep(WARMUP_SECONDS)
        cpu0, packets0, at0 = cpu_and_rss([process.pid])[0], forwarded_packets(control.call("get_stats")["stats"]), \
            time.monotonic()
        recorder_cpu0 = cpu_and_rss(family(recorder[0].pid))[0] if recorder else 0.0
        time.sleep(seconds)
        cpu1, packets1, at1 = cpu_and_rss([process.pid])[0], forwarded_packets(control.call("get_stats")["stats"]), \
            time.monotonic()
        recorder_cpu1 = cpu_and_rss(family(recorder[0].pid))[0] if recorder else 0.0
        gaps = segments = 0
        if recorder:
            listed = recorder[1].call("get_stats")["recordings"]
            gaps = sum(len(entry.get("gaps") or []) for entry in listed)
            segments = sum(int(entry.get("segments") or 0) for entry in listed)
    finally:
        for process_ in senders:
            process_.kill()
            process_.wait(timeout=5)
    control.call("set_state", secrets=[JOIN_SECRET], sessions=[])
    if recorder:  # finalized and forgotten before the next round, so its MP4 remux is not measured there
        recorder[1].call("set_state", recordings=[])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = recorder[1].call("get_stats")["recordings"]
            if all(entry["state"] not in ("recording", "finalizing") for entry in listed):
                break
            time.sleep(0.5)
        recorder[1].call("forget", keys=[entry["key"] for entry in recorder[1].call("get_stats")["recordings"]])
    packets, elapsed = packets1 - packets0, at1 - at0
    return {"pps": packets / elapsed, "cpu_share": (cpu1 - cpu0) / elapsed,
            "cpu_ms_per_1000": 1e6 * (cpu1 - cpu0) / max(packets, 1), "gaps": gaps, "segments": segments,
            "recorder_cpu_share_per_session": (recorder_cpu1 - recorder_cpu0) / elapsed / sessions if recorder else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--branches", type=int, default=4, help="receiving classrooms per session")
    parser.add_argument("--seconds", type=float, default=12.0, help="measured window per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each variant, interleaved")
    arguments = parser.parse_args()
    assert 1 <= arguments.sessions <= 32 and 1 <= arguments.branches <= 16 and 1 <= arguments.rounds <= 10
    assert 2 <= arguments.seconds <= 60
    encode_source()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    plane, match = start([sys.executable, "-m", "services.classroom_relay.dataplane", "--media-port", "0",
                          "--control-port", "0", "--metrics-port", "0"], DATAPLANE_READY,
                         {"RELAY_CONTROL_SECRET": CONTROL_SECRET})
    control = ControlClient(port=int(match.group(4)), secret=CONTROL_SECRET, timeout=10)
    media = ("127.0.0.1", int(match.group(2)))
    root = Path(tempfile.mkdtemp(prefix="bench-recording-relay-", dir=ROOT / "var" / "bench"))
    recorder_media = free_udp_block(8 * arguments.sessions + 2)
    recorder_port = free_tcp_port()
    recorder, _ = start([sys.executable, "-m", "services.classroom_relay.recorder", "--control-port",
                         str(recorder_port), "--metrics-port", "0", "--control-secret", CONTROL_SECRET,
                         "--root", str(root), "--media-host", "127.0.0.1",
                         "--media-ports", f"{recorder_media}-{recorder_media + 8 * arguments.sessions + 1}",
                         "--min-free-bytes", str(1 << 30), "--low-free-bytes", str(2 << 30)], RECORDER_READY, {})
    recorder_control = ControlClient(port=recorder_port, secret=CONTROL_SECRET, timeout=10)
    sinks = Sinks(2 * len(MASTER_TRACKS) * arguments.sessions * arguments.branches)
    results: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    try:
        for _ in range(arguments.rounds):
            for variant in ("without", "with"):
                attached = (recorder, recorder_control, recorder_media) if variant == "with" else None
                found = one_round((plane, control, media), attached, arguments.sessions, arguments.branches,
                                  arguments.seconds, sinks)
                results[variant].append(found)
                extra = (f"; recorder {100 * found['recorder_cpu_share_per_session']:.2f} % of a core per session, "
                         f"{found['segments']:.0f} segments, {found['gaps']:.0f} gaps") if attached else ""
                print(f"  {variant:<7} recorder: {found['pps']:8.0f} packets/s forwarded, data plane "
                      f"{100 * found['cpu_share']:5.1f} % of a core, {found['cpu_ms_per_1000']:.2f} ms CPU per 1000 "
                      f"packets{extra}", flush=True)
    finally:
        sinks.close()
        for process in (recorder, plane):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            if process.poll() is None:
                process.kill()
        subprocess.run(["rm", "-rf", str(root)], check=False)

    def median(variant: str, field: str) -> float:
        return statistics.median(found[field] for found in results[variant])

    ratios = {field: statistics.median(w[field] / max(o[field], 1e-9) for w, o in zip(results["with"],
                                                                                      results["without"], strict=True))
              for field in ("pps", "cpu_share", "cpu_ms_per_1000")}
    print(f"\n{arguments.sessions} sessions x (1 master -> {arguments.branches} classrooms, 3 tracks ~4 Mbit/s), "
          f"{arguments.rounds} rounds of {arguments.seconds:.0f} s each, interleaved; medians:")
    for variant in ("without", "with"):
        print(f"  {variant:<7} recorder: {median(variant, 'pps'):8.0f} packets/s, data plane "
              f"{100 * median(variant, 'cpu_share'):5.1f} % of a core, "
              f"{median(variant, 'cpu_ms_per_1000'):.2f} ms CPU / 1000 packets")
    print(f"  with/without (median of per-round ratios): packets/s x{ratios['pps']:.3f} (expected "
          f"x{(arguments.branches + 1) / arguments.branches:.3f}: one more receiver per session), data plane CPU "
          f"x{ratios['cpu_share']:.3f}, CPU per packet x{ratios['cpu_ms_per_1000']:.3f}")
    print(f"  recorder: {100 * median('with', 'recorder_cpu_share_per_session'):.2f} % of a core per session, "
          f"{sum(found['segments'] for found in results['with']):.0f} segments written, "
          f"segment gaps {sum(found['gaps'] for found in results['with']):.0f} (must be 0)")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
