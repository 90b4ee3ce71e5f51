"""Benchmark of the recorder (``make bench-recording``): N recorded sessions at once at ~4 Mbit/s each.

Each session is what the data plane forwards the recorder for one lesson: camera H.264 720p25 ~3.4 Mbit/s
(2 s GOP), courseware H.264 720p5 ~0.5 Mbit/s, Opus 64 kbit/s, as RTP to the recorder's ports. The media is
encoded once (var/bench/recording-source.ts) and every sender is `ffmpeg -re -c copy` to RTP, so senders cost
little. For N in --sessions (default 1, 4, 8, 16), for --seconds each (after every session's first segment):
- segment gaps in the recordings (must be 0) and segments written;
- the recorder's CPU (its own process and its ffmpeg children, user + system) per session, as a share of one
  core, and the peak resident memory of the recorder and its children together, per session;
- segment-to-playlist latency: a segment file's modification time (ffmpeg renames it into place when complete)
  to the first time the recording's index.m3u8 lists it, polled every 50 ms from outside (p50, p99);
- the time from the end of the sessions until every MP4 is written.
Everything runs on 127.0.0.1 and is bounded in sessions and seconds; about 2.5 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.classroom_relay.dataplane.protocol import ControlClient  # noqa: E402
from services.classroom_relay.sdp import Section, build_receiver_sdp  # noqa: E402

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
SOURCE = ROOT / "var" / "bench" / "recording-source.ts"
SOURCE_SECONDS = 90  # longer than any round: no looping, no timestamp jumps
SECRET = "bench-recording-secret"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
TRACKS = (
    {"track": "camera", "kind": "video", "codec": "h264", "payload_type": 96, "clock_rate": 90_000},
    {"track": "audio", "kind": "audio", "codec": "opus", "payload_type": 111, "clock_rate": 48_000, "channels": 2},
    {"track": "courseware", "kind": "video", "codec": "h264", "payload_type": 96, "clock_rate": 90_000},
)


def encode_source() -> None:
    """Once: the lesson's media, with SPS/PPS before every keyframe (MPEG-TS, no global header), as a
    classroom encoder sends them."""
    if SOURCE.exists():
        return
    SOURCE.parent.mkdir(parents=True, exist_ok=True)
    print(f"encoding {SOURCE} once ({SOURCE_SECONDS} s) ...", flush=True)
    video = ["-c:v", "libx264", "-preset", "veryfast", "-bf", "0", "-pix_fmt", "yuv420p"]
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=25:duration={SOURCE_SECONDS}",
         "-f", "lavfi", "-i", f"testsrc=size=1280x720:rate=5:duration={SOURCE_SECONDS}",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={SOURCE_SECONDS}",
         "-map", "0:v", "-map", "2:a", "-map", "1:v",
         "-c:v:0", *video[1:], "-g:v:0", "50", "-b:v:0", "3400k", "-maxrate:v:0", "3400k", "-bufsize:v:0", "3400k",
         "-c:v:1", "libx264", "-g:v:1", "10", "-b:v:1", "500k", "-maxrate:v:1", "500k", "-bufsize:v:1", "1000k",
         "-c:a", "libopus", "-b:a", "64k", "-f", "mpegts", str(SOURCE.with_suffix(".tmp"))],
        check=True, timeout=900)  # fmt: skip
    SOURCE.with_suffix(".tmp").rename(SOURCE)


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def entry(number: int, base: int) -> dict:
    sections = [Section(base + 2 * index, track, f"bench-master/{track['track']}", ("127.0.0.1", 9))
                for index, track in enumerate(TRACKS)]
    return {"key": f"rec-bench-{number}", "session": f"bench-{number}", "keep": True,
            "sdp": build_receiver_sdp(relay_host="127.0.0.1", sections=sections),
            "tracks": [{"track": track["track"], "kind": track["kind"], "codec": track["codec"],
                        "source": "bench-master", "port": base + 2 * index} for index, track in enumerate(TRACKS)]}


def sender(base: int, seconds: int) -> subprocess.Popen:
    outputs = []
    for index, (stream, track) in enumerate(zip(("0:v:0", "0:a:0", "0:v:1"), TRACKS, strict=True)):
        outputs += ["-map", stream, "-c", "copy", "-payload_type", str(track["payload_type"]), "-f", "rtp",
                    f"rtp://127.0.0.1:{base + 2 * index}?pkt_size=1200"]
    return subprocess.Popen(
        [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-t", str(seconds), "-i", str(SOURCE),
         *outputs], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def family(pid: int) -> list[int]:
    """The recorder and its children."""
    found = [pid]
    for entry_ in Path("/proc").iterdir():
        if entry_.name.isdigit():
            try:
                stat = (entry_ / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry_.name))
    return found


def cpu_and_rss(pids: list[int]) -> tuple[float, int, int]:
    """User + system CPU seconds (with reaped children's), resident bytes and proportional set size (shared
    pages — ffmpeg's libraries — divided among the processes sharing them) of these processes."""
    cpu, rss, pss = 0.0, 0, 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        cpu += sum(int(value) for value in fields[11:15]) / TICKS  # utime stime cutime cstime
        rss += int(fields[21]) * PAGE
        pss += next((int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return cpu, rss, pss


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def one_round(sessions: int, seconds: int, media_base: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-recordings-", dir=ROOT / "var" / "bench"))
    control_port = free_tcp_port()
    recorder = subprocess.Popen(
        [sys.executable, "-m", "services.classroom_relay.recorder", "--control-port", str(control_port),
         "--metrics-port", "0", "--control-secret", SECRET, "--root", str(root),
         "--media-ports", f"{media_base}-{media_base + 8 * sessions}", "--min-free-bytes", str(1 << 30),
         "--low-free-bytes", str(2 << 30)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    assert recorder.stdout is not None
    assert b"ready" in recorder.stdout.readline()
    control = ControlClient(port=control_port, secret=SECRET, timeout=10)
    entries = [entry(number, media_base + 8 * number) for number in range(sessions)]
    senders: list[subprocess.Popen] = []
    try:
        reply = control.call("set_state", recordings=entries)
        assert reply["ok"] and not reply["refused"], reply
        senders = [sender(media_base + 8 * number, seconds + 25) for number in range(sessions)]
        indexes = [root / item["key"] / "index.m3u8" for item in entries]
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and not all(path.exists() for path in indexes):
            time.sleep(0.1)
        seen: set[str] = set()
        latencies: list[float] = []
        for path in indexes:  # listed before the window opened: no latency measured for those
            if path.exists():
                seen |= {f"{path.parent.name}/{line}" for line in path.read_text().splitlines()
                         if line.endswith(".m4s")}
        start_cpu, peak_rss, peak_pss = cpu_and_rss(family(recorder.pid))
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            pids = family(recorder.pid)
            _, rss, pss = cpu_and_rss(pids)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            for path in indexes:
                try:
                    listed = [line for line in path.read_text().splitlines() if line.endswith(".m4s")]
                except FileNotFoundError:
                    continue
                now = time.time()
                for uri in listed:
                    name = f"{path.parent.name}/{uri}"
                    if name not in seen:
                        seen.add(name)
                        try:
                            latencies.append(now - (path.parent / uri).stat().st_mtime)
                        except FileNotFoundError:
                            continue
            time.sleep(0.05)
        end_cpu, _, _ = cpu_and_rss(family(recorder.pid))
        elapsed = time.monotonic() - started
        ended = time.monotonic()
        control.call("set_state", recordings=[])
        finished = []
        while time.monotonic() - ended < 120:
            stats = control.call("get_stats")["recordings"]
            finished = [item for item in stats if item["state"] not in ("recording", "finalizing")]
            if len(finished) == sessions:
                break
            time.sleep(0.2)
        finalize_seconds = time.monotonic() - ended
        gaps = sum(len(item["gaps"]) for item in finished)
        mp4s = sum(1 for item in finished if item["files"]["program_mp4"] and item["files"]["courseware_mp4"])
        segments = sum(item["segments"] or 0 for item in finished)
        states = sorted({item["state"] for item in finished})
        segment_bytes = sum(path.stat().st_size for path in root.rglob("*.m4s"))
        probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0",
                                str(root / entries[0]["key"] / "program.mp4")], capture_output=True, text=True,
                               check=False, timeout=30)
        codecs = sorted(probe.stdout.split())
        bitrate = segment_bytes * 8 / max(1.0, sum(item["duration_seconds"] for item in finished))
    finally:
        for process in senders:
            process.kill()
            process.wait()
        control.close()
        recorder.send_signal(signal.SIGTERM)
        try:
            recorder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            recorder.kill()
        shutil.rmtree(root, ignore_errors=True)
    return {"sessions": sessions, "seconds": round(elapsed, 1), "gaps": gaps, "segments": segments,
            "states": states, "mp4_pairs": mp4s, "cpu_share_per_session": (end_cpu - start_cpu) / elapsed / sessions,
            "peak_rss_mb_per_session": peak_rss / sessions / 1e6,
            "peak_pss_mb_per_session": peak_pss / sessions / 1e6, "peak_rss_mb": peak_rss / 1e6,
            "latency_p50_ms": percentile(latencies, 0.5) * 1000, "latency_p99_ms": percentile(latencies, 0.99) * 1000,
            "latency_samples": len(latencies), "finalize_seconds": round(finalize_seconds, 1),
            "recorded_mbit_per_s_per_session": bitrate / 1e6, "program_codecs": codecs}


def _interrupt(_signal: int, _frame: object) -> None:
    raise KeyboardInterrupt  # the round's `finally` stops the senders and the recorder and removes its files


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", default="1,4,8,16", help="comma-separated N")
    parser.add_argument("--seconds", type=int, default=20, help="measured seconds per N")
    parser.add_argument("--media-base", type=int, default=46000)
    parser.add_argument("--json", action="store_true", help="one JSON line per N as well")
    arguments = parser.parse_args()
    encode_source()
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}; load average at start "
          f"{os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs", flush=True)
    print(f"{'N':>3} {'gaps':>4} {'segments':>8} {'CPU/session':>11} {'RSS/session':>11} {'PSS/session':>11} "
          f"{'playlist p50':>12} "
          f"{'p99':>7} {'MP4s after':>10}  recorded")
    for sessions in (int(value) for value in arguments.sessions.split(",") if value):
        result = one_round(sessions, arguments.seconds, arguments.media_base)
        print(f"{sessions:>3} {result['gaps']:>4} {result['segments']:>8} "
              f"{100 * result['cpu_share_per_session']:>9.1f} % {result['peak_rss_mb_per_session']:>8.1f} MB "
              f"{result['peak_pss_mb_per_session']:>8.1f} MB "
              f"{result['latency_p50_ms']:>9.0f} ms {result['latency_p99_ms']:>4.0f} ms "
              f"{result['finalize_seconds']:>8.1f} s  {result['recorded_mbit_per_s_per_session']:.2f} Mbit/s "
              f"of segments per session, states {result['states']}, MP4 pairs {result['mp4_pairs']}/{sessions} "
              f"({'+'.join(result['program_codecs'])})",
              flush=True)
        if arguments.json:
            print(json.dumps(result), flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
