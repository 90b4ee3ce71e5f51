"""Fixtures for the relay data plane tests: a real data-plane subprocess on 127.0.0.1, ports, receivers."""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.classroom_relay.dataplane.protocol import ControlClient

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_PATTERN = re.compile(rb"relay-dataplane ready media=([\d.]+):(\d+) rtcp=(\d+) control=(\d+)")
SECRET = "test-secret-please-rotate"


def free_udp_port_pair() -> int:
    """A port p with p and p+1 both free for UDP on 127.0.0.1 (RTP + RTCP, as ffmpeg binds them)."""
    for _ in range(200):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        if port % 2 or port >= 65534:
            probe.close()
            continue
        companion = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            companion.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        finally:
            companion.close()
            probe.close()
        return port
    raise RuntimeError("no free UDP port pair")


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class DataPlane:
    process: subprocess.Popen
    media_port: int
    rtcp_port: int
    control_port: int
    metrics_port: int
    control: ControlClient
    control_secret: str
    scratch: str | None = None  # the temporary folder of a generated secret file, removed on stop

    def call(self, op: str, **fields: object) -> dict:
        """One control request that must succeed."""
        reply = self.control.call(op, **fields)
        assert reply["ok"], f"control {op} refused: {reply}"
        return reply

    def stats(self, session: str | None = None) -> dict:
        return self.call("get_stats", **({"session": session} if session else {}))["stats"]

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def stop(self) -> str:
        """Terminate (then kill) the process and return what it wrote to stderr."""
        self.control.close()
        stop_process(self.process)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        return self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""


def start_dataplane(*extra: str, secret_file: str | None = None) -> DataPlane:
    """A data plane subprocess; its control secret is generated into ``secret_file`` (a fresh temporary
    file by default) as `make run` does it, and the client reads it from there."""
    metrics_port = free_tcp_port()
    scratch = None
    if secret_file is None:
        scratch = tempfile.mkdtemp(prefix="relay-test-")
        secret_file = os.path.join(scratch, "control.secret")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RELAY_CONTROL_SECRET_FILE": secret_file}
    env.pop("RELAY_CONTROL_SECRET", None)
    try:
        process, match = start_relay_process(
            ["services.classroom_relay.dataplane", "--media-port", "0", "--control-port", "0",
             "--metrics-port", str(metrics_port), *extra],
            env, READY_PATTERN, "data plane", timeout=15,
        )  # fmt: skip
    except RuntimeError:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    _host, media_port, rtcp_port, control_port = match.groups()
    control_secret = Path(secret_file).read_text().strip()
    return DataPlane(
        process, int(media_port), int(rtcp_port), int(control_port), metrics_port,
        ControlClient(port=int(control_port), secret=control_secret), control_secret, scratch,
    )


def start_relay_process(module_and_arguments: list[str], env: dict[str, str], ready: re.Pattern[bytes], what: str,
                        timeout: float = 20) -> tuple[subprocess.Popen, re.Match[bytes]]:
    """`python -m module arguments...` from the repository, read until its ready line (which carries the ports
    it bound); RuntimeError with its stderr if it exits or says nothing else first."""
    process = subprocess.Popen([sys.executable, "-m", *module_and_arguments], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline:
        line = process.stdout.readline() if process.stdout else b""
        if ready.search(line) or process.poll() is not None:
            break
    match = ready.search(line)
    if match is None:
        process.kill()
        raise RuntimeError(f"{what} did not start: {line!r} {process.stderr.read() if process.stderr else b''!r}")
    return process, match


def stop_process(process: subprocess.Popen, grace: float = 5) -> None:
    """SIGTERM, and SIGKILL if it has not exited after `grace` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture
def dataplane(request: pytest.FixtureRequest) -> Iterator[DataPlane]:
    # Indirect parametrisation passes extra command-line flags, e.g. ["--no-gso"].
    plane = start_dataplane(*getattr(request, "param", ()))
    try:
        plane.call("set_secrets", secrets=[SECRET])
        yield plane
    finally:
        errors = plane.stop()
        # Surface a crash of the data plane as a test failure rather than a silent pass.
        assert "Traceback" not in errors, errors


# Linux's SO_TIMESTAMPNS (also its control-message type); Python's socket module does not name it.
SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("@qq")


class UdpCollector:
    """A receiving classroom made of a plain UDP socket: counts what arrives and when.

    Arrival times are the kernel's receive timestamps, not the time this thread got around to reading:
    under load the reader is descheduled and then drains a backlog at once, which would make a paced
    stream look bursty when it was not.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.arrivals: list[tuple[float, int]] = []
        self.packets: list[bytes] = []

    def collect(self, duration: float, keep: bool = False, max_packets: int = 200_000) -> None:
        deadline = time.monotonic() + duration
        buffer = bytearray(2048)
        while len(self.arrivals) < max_packets:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Under the test process's eventlet patching, recvmsg_into does not wait for data by itself
            # (it answers EAGAIN), so wait with select, which eventlet makes cooperative.
            readable, _, _ = select.select([self.sock], [], [], remaining)
            if not readable:
                return
            try:
                size, ancillary, _flags, _address = self.sock.recvmsg_into([buffer], socket.CMSG_SPACE(TIMESPEC.size))
            except BlockingIOError:
                continue
            self.arrivals.append((self._kernel_time(ancillary), size))
            if keep:
                self.packets.append(bytes(buffer[:size]))

    @staticmethod
    def _kernel_time(ancillary: list[tuple[int, int, bytes]]) -> float:
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
                seconds, nanoseconds = TIMESPEC.unpack_from(data)
                return seconds + nanoseconds / 1e9
        return time.time()  # the same clock (CLOCK_REALTIME) if the kernel sent no timestamp

    def close(self) -> None:
        self.sock.close()


def rtp_sender(bind_port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind(("127.0.0.1", bind_port))
    return sock


def send_stream(
    sock: socket.socket,
    destination: tuple[str, int],
    ssrc: int,
    packets: int,
    packets_per_second: float,
    payload_bytes: int = 1000,
    keyframe_every: int = 25,
    first_sequence: int = 0,
    packets_per_frame: int = 5,
) -> None:
    """A bounded synthetic H.264-looking stream: an IDR slice every ``keyframe_every`` packets."""
    from services.classroom_relay.dataplane.rtp import build_rtp

    filler = bytes(payload_bytes - 1)
    start = time.monotonic()
    for index in range(packets):
        nal = b"\x65" if index % keyframe_every == 0 else b"\x41"
        packet = build_rtp(
            nal + filler,
            sequence_number=first_sequence + index,
            timestamp=(index // packets_per_frame) * 3600,
            ssrc=ssrc,
            marker=index % packets_per_frame == packets_per_frame - 1,
        )
        sock.sendto(packet, destination)
        ahead = start + (index + 1) / packets_per_second - time.monotonic()
        if ahead > 0.002:
            time.sleep(ahead)


def wait_until(condition, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
