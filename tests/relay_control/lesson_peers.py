"""ffmpeg as the classrooms of the control plane's full-path tests: encoders that send each track from its
own RTP port, and a receiver that decodes every track of an SDP the relay hands out (127.0.0.1 only)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

FFMPEG = shutil.which("ffmpeg")


def free_port_block(pairs: int, attempts: int = 200) -> int:
    """An even port p with p .. p + 2 * pairs - 1 free for UDP on 127.0.0.1 (RTP and RTCP of each track)."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1] & ~1
        if base + 2 * pairs >= 65535 or base < 10_000:
            continue
        with ExitStack() as stack:
            try:
                for port in range(base, base + 2 * pairs):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no {2 * pairs} consecutive free UDP ports")


@dataclass(frozen=True)
class VideoSource:
    track: str
    pattern: str  # an ffmpeg lavfi source, e.g. testsrc2=size=320x240:rate=25
    bitrate: str
    local_port: int


@dataclass(frozen=True)
class AudioSource:
    local_port: int
    frequency: int = 440
    track: str = "audio"


def encoder(media: tuple[str, int], seconds: float, videos: list[VideoSource], audio: AudioSource | None
            ) -> subprocess.Popen:
    """One ffmpeg process sending each track as RTP from its own local port (what the relay pins)."""
    assert FFMPEG is not None
    command = [FFMPEG, "-nostdin", "-v", "error", "-re"]
    for video in videos:
        command += ["-f", "lavfi", "-i", video.pattern]
    if audio is not None:
        command += ["-f", "lavfi", "-i", f"sine=frequency={audio.frequency}:sample_rate=48000"]
    command += ["-t", str(seconds)]
    for index, video in enumerate(videos):
        command += [
            "-map", f"{index}:v", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25",
            "-bf", "0", "-pix_fmt", "yuv420p", "-b:v", video.bitrate, "-maxrate", video.bitrate,
            "-bufsize", video.bitrate, "-payload_type", "96", "-f", "rtp",
            f"rtp://{media[0]}:{media[1]}?localport={video.local_port}&pkt_size=1200",
        ]  # fmt: skip
    if audio is not None:
        command += [
            "-map", f"{len(videos)}:a", "-c:a", "libopus", "-b:a", "64k", "-ac", "2", "-payload_type", "97",
            "-f", "rtp", f"rtp://{media[0]}:{media[1]}?localport={audio.local_port}",
        ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def decoder(sdp: str, path: Path, seconds: float) -> subprocess.Popen:
    """ffmpeg playing an SDP: every stream decoded, one framecrc line per frame (stream index first)."""
    assert FFMPEG is not None
    path.write_text(sdp)
    return subprocess.Popen(
        [FFMPEG, "-nostdin", "-v", "error", "-protocol_whitelist", "file,udp,rtp", "-i", str(path),
         "-map", "0", "-t", str(seconds), "-f", "framecrc", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def finish(process: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate(timeout=5)
    return process.returncode, (stdout or b"").decode(), (stderr or b"").decode()


@contextmanager
def peers(limit_seconds: float) -> Iterator[list[subprocess.Popen]]:
    """A list to put the test's peer processes in: whatever is still running is killed at the end, and the
    whole block must finish within `limit_seconds`."""
    started = time.monotonic()
    processes: list[subprocess.Popen] = []
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
    assert time.monotonic() - started < limit_seconds


def frames_by_stream(framecrc: str) -> dict[int, list[int]]:
    """Decoded frame sizes per stream index (framecrc: stream, dts, pts, duration, size, crc)."""
    found: dict[int, list[int]] = {}
    for line in framecrc.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        found.setdefault(int(fields[0]), []).append(int(fields[4]))
    return found


def labels_of(sdp: str) -> list[str]:
    """The a=label of each m= section, in order (= ffmpeg's stream indexes)."""
    return [line.split(":", 1)[1] for line in sdp.splitlines() if line.startswith("a=label:")]


def yuv420_bytes(width: int, height: int) -> int:
    return width * height * 3 // 2
