"""Real nginx as `make run` configures it (services/gateway/local_proxy.py), ffmpeg-made media, Chromium."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from services.common.playback_urls import signed_path
from services.gateway.local_proxy import Media, nginx_command, write_config

CHROMIUM = Path("/usr/bin/chromium")
SECRET = "test-playback-secret-7d1f"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Nginx:
    """nginx serving /media/ from `recordings_root` and /patrol/ from web/, with no gateway behind it."""

    def __init__(self, recordings_root: Path | None, secret: str = SECRET) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="lxt-web-"))
        self.secret = secret
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        media = Media(recordings_root, secret) if recordings_root is not None else None
        config = write_config(self.run_dir, f"127.0.0.1:{self.port}", self.run_dir / "gateway.sock", media=media)
        self.log_path = self.run_dir / "nginx.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(nginx_command(config), stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.log_path.read_text(errors='replace')}")
            try:
                requests.get(f"{self.url}/patrol/", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not answer within 15 s")

    def signed(self, key: str, file: str, lifetime: int = 600, start: float | None = None,
               end: float | None = None, secret: str | None = None) -> str:
        expires = int(time.time()) + lifetime
        return self.url + signed_path(key, file, expires, secret or self.secret, start, end)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


@contextmanager
def nginx(recordings_root: Path | None, secret: str = SECRET) -> Iterator[Nginx]:
    server = Nginx(recordings_root, secret)
    try:
        yield server
    finally:
        server.stop()


def make_mp4(path: Path, seconds: int, audio: str = "libopus") -> None:
    """A recording as the recorder leaves it: encoded once (H.264 with a keyframe every second, Opus or AAC),
    then remuxed with `-c copy` into a faststart MP4, as the recorder does when a lesson ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source = path.with_suffix(".source.mkv")
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=25:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
         "-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-pix_fmt", "yuv420p",
         "-c:a", audio, "-b:a", "64k", str(source)],
        check=True, timeout=120,
    )
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(source), "-c", "copy",
                    "-movflags", "+faststart", str(path)], check=True, timeout=60)
    source.unlink()


def probe_duration(path: Path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "default=nw=1:nk=1", str(path)],
        check=True, capture_output=True, text=True, timeout=30,
    )
    return float(out.stdout.strip())


def probe_codecs(path: Path) -> list[str]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "default=nw=1:nk=1", str(path)],
        check=True, capture_output=True, text=True, timeout=30,
    )
    return out.stdout.split()
