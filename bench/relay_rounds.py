"""The rounds of `make bench-relay` (bench/relay_bench.py): receivers, spawning the child roles
(bench/relay_roles.py), one throughput or latency measurement, the variants a round runs."""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import sys
import time

from relay_lessons import MIXES
from relay_setup import (
    BURST_SECONDS,
    LATENCY_PPS,
    LATENCY_SECONDS,
    ROOT,
    ROUNDS,
    RUN,
    SINK_RECEIVE_BUFFER,
    WARMUP_PACKETS,
)
from relay_wire import SEND_STAMP

BENCH_SCRIPT = ROOT / "bench" / "relay_bench.py"
COMPANIONS: dict[int, socket.socket] = {}  # sink fd -> the socket holding its port + 1


def make_sinks(count: int, receive_buffer: int = 1 << 20) -> list[socket.socket]:
    """Receivers, each with its RTP port + 1 held by a companion socket (where the relay's sender reports
    go, RFC 3550): otherwise the kernel could give that port to one of the relay's own sockets, which
    would then count the reports as RTCP from a wrong port."""
    sinks = []
    while len(sinks) < count:
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        companion = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            companion.bind(("127.0.0.1", sink.getsockname()[1] + 1))
        except OSError:
            sink.close()
            companion.close()
            continue
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sink.setblocking(False)
        COMPANIONS[sink.fileno()] = companion
        sinks.append(sink)
    return sinks


def close_sinks(sinks: list[socket.socket]) -> None:
    for sink in sinks:
        companion = COMPANIONS.pop(sink.fileno(), None)
        if companion is not None:
            companion.close()
        sink.close()


def free_port() -> int:
    """A port for a generator to bind later: below the kernel's ephemeral range, so that the relay's own
    sockets (ephemeral: 800 of them at 1→200) cannot take it in between."""
    import random

    with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
        ephemeral_low = int(ports.read().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, ephemeral_low - 20_000), ephemeral_low)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn(role: str, *extra: str, code_root: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(BENCH_SCRIPT), "--role", role, "--code-root", code_root or RUN.code_root, *extra],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def read_json(process: subprocess.Popen, timeout: float = 15.0) -> dict:
    ready = select.select([process.stdout], [], [], timeout)[0]
    if not ready:
        process.kill()
        raise RuntimeError("benchmark child did not answer in time")
    return json.loads(process.stdout.readline())


SO_TIMESTAMPNS = 35  # Linux; also its control-message type (Python's socket module does not name it)
TIMESPEC = struct.Struct("@qq")


def _monotonic_minus_realtime() -> int:
    """CLOCK_MONOTONIC − CLOCK_REALTIME in ns (the tightest of a few readings): kernel receive timestamps are
    realtime, the generator's send stamps monotonic."""
    best = None
    for _ in range(5):
        before = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        if best is None or after - before < best[0]:
            best = (after - before, (before + after) // 2 - wall)
    assert best is not None
    return best[1]


def drain(sinks: list[socket.socket], until: float, latencies: list[int] | None = None) -> int:
    """Read sinks until ``until``; returns packets received, recording latency when asked.

    A packet's arrival is the kernel's receive time stamp (SO_TIMESTAMPNS, taken when the datagram reaches
    the receiver's socket), not when this process got round to reading it: this process shares a core with
    the generator, and its own wake-up is neither the relay's doing nor the same on the direct path (same
    core as the sender) as on the relayed one (another core)."""
    poller = select.epoll()
    for sink in sinks:
        poller.register(sink.fileno(), select.EPOLLIN)
        if latencies is not None:
            sink.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    by_fd = {sink.fileno(): sink for sink in sinks}
    buffer = bytearray(2048)
    ancillary_bytes = socket.CMSG_SPACE(TIMESPEC.size)
    to_monotonic = _monotonic_minus_realtime()
    received = 0
    while time.monotonic() < until:
        for fd, _event in poller.poll(0.05):
            sink = by_fd[fd]
            while True:
                try:
                    size, ancillary, _flags, _address = sink.recvmsg_into([buffer], ancillary_bytes)
                except BlockingIOError:
                    break
                arrived = time.monotonic_ns()
                for level, kind, data in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
                        seconds, nanoseconds = TIMESPEC.unpack_from(data)
                        arrived = seconds * 1_000_000_000 + nanoseconds + to_monotonic
                received += 1
                if latencies is not None and size >= 21:
                    latencies.append(arrived - SEND_STAMP.unpack_from(buffer, 13)[0])
    poller.close()
    return received


def one_round(
    role: str, fanout: int, gso: bool = False, layers: int = 1, mix: str = "", code_root: str | None = None
) -> dict:
    """One throughput measurement. The sinks are not read: reading 10⁵–10⁶ packets/s in Python would
    take the load core from the generator; the kernel drops what overflows their small buffers, after
    the forwarder's send has done all its work. ``mix``: a lesson's streams (MIXES), one sink per
    (receiving classroom, track); ``code_root``: whose data plane (default: --code-root)."""
    streams = len({slot.partition(":")[0] for slot, *_rest in MIXES[mix]}) if mix else 1
    sinks = make_sinks(fanout * streams, SINK_RECEIVE_BUFFER)
    source_ports = [free_port() for _ in (MIXES[mix] if mix else (None,))]
    source_port = source_ports[0]
    extra = ["--sinks", *[str(sink.getsockname()[1]) for sink in sinks], "--source-port", str(source_port)]
    mixing = ["--mix", mix, "--source-ports", *map(str, source_ports)] if mix else []
    if gso:
        extra.append("--gso")
    forwarder = spawn(role, *extra, *mixing, code_root=code_root)
    generator = None
    try:
        port = read_json(forwarder)["port"]
        generator = spawn("generator", "--port", str(port), "--source-port", str(source_port),
                          "--seconds", str(BURST_SECONDS), "--layers", str(layers), *mixing)  # fmt: skip
        sent = read_json(generator)["sent"]
        result = read_json(forwarder)
        result["sent"] = sent
        generator.wait(timeout=5)
        forwarder.wait(timeout=5)
        return result
    finally:
        for process in (forwarder, generator):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=5)
        close_sinks(sinks)


def latency_round(
    fanout: int, direct: bool, trace: bool = False, code_root: str | None = None, busy_poll_us: float = 0.0
) -> dict:
    sinks = make_sinks(fanout)
    source_port = free_port()
    forwarder = None
    try:
        if direct:
            port = sinks[0].getsockname()[1]
        else:
            forwarder = spawn("engine", "--sinks", *[str(s.getsockname()[1]) for s in sinks],
                              "--source-port", str(source_port), "--gso", "--realtime",
                              *(["--trace"] if trace else []), "--busy-poll-us", str(busy_poll_us),
                              code_root=code_root)  # fmt: skip
            port = read_json(forwarder)["port"]
        limit = str(int(LATENCY_PPS * LATENCY_SECONDS) + WARMUP_PACKETS)
        generator = spawn("generator", "--port", str(port), "--source-port", str(source_port),
                          "--seconds", str(LATENCY_SECONDS), "--pps", str(LATENCY_PPS),
                          "--max-packets", limit)  # fmt: skip
        latencies: list[int] = []
        start = time.monotonic()
        # Only the first receiver is read and timed (all get the same packets): reading four at 20 k/s
        # each in this Python process would measure this process, not the relay.
        received = drain(sinks[:1], start + LATENCY_SECONDS + 1.0, latencies)
        sent = read_json(generator)["sent"]
        generator.wait(timeout=5)
        breakdown = read_json(forwarder, timeout=8).get("trace", {}) if trace and forwarder is not None else {}
        # The warm-up packets before the relay picked a layer are not forwarded by design: compare the
        # steady part only (latencies were recorded for what arrived).
        steady = latencies[len(latencies) // 10 :]
        steady.sort()
        expected_steady = sent - WARMUP_PACKETS
        forwarded_steady = received - min(received, WARMUP_PACKETS if direct else 0)
        return {
            "p50_us": steady[len(steady) // 2] / 1000 if steady else float("nan"),
            "p99_us": steady[int(len(steady) * 0.99)] / 1000 if steady else float("nan"),
            "received": received,
            "expected_steady": expected_steady,
            "loss": max(0.0, 1 - forwarded_steady / expected_steady) if expected_steady else float("nan"),
            "trace": breakdown,
        }
    finally:
        if forwarder is not None:
            forwarder.kill()
            forwarder.wait(timeout=5)
        close_sinks(sinks)


VARIANTS = (("bare", "bare recv/send", "bare", False), ("c", "C recvmmsg/sendmmsg", "c", False),
            ("full", "full logic", "engine", False), ("gso", "full logic + GSO", "engine", True))  # fmt: skip


def variants() -> list[tuple[str, str, str, bool, str | None]]:
    """(key, label, role, GSO, code root) of every variant of a round, in the order they run."""
    found: list[tuple[str, str, str, bool, str | None]] = [(*variant, None) for variant in VARIANTS]
    if RUN.compare_root:
        found += [("full_cmp", "full [compared]", "engine", False, RUN.compare_root),
                  ("gso_cmp", "GSO [compared]", "engine", True, RUN.compare_root)]  # fmt: skip
    return found


C_FORWARDER_SOURCE = ROOT / "bench" / "relay_forwarder.c"


def build_c_forwarder() -> str | None:
    """Compile bench/relay_forwarder.c with the system cc (-O2) into a temporary directory; None without cc."""
    import shutil
    import tempfile

    compiler = shutil.which("cc")
    if compiler is None:
        return None
    binary = os.path.join(tempfile.mkdtemp(prefix="relay-bench-"), "relay_forwarder")
    subprocess.run([compiler, "-O2", "-o", binary, str(C_FORWARDER_SOURCE)], check=True)
    return binary


def throughput(fanout: int) -> dict[str, list[dict]]:
    """ROUNDS interleaved rounds of every variant: bare, full, GSO, bare, full, GSO, …"""
    rounds: dict[str, list[dict]] = {key: [] for key, *_ in variants()}
    for _ in range(ROUNDS):
        for key, _label, role, gso, code_root in variants():
            if role == "c" and not os.environ.get("RELAY_BENCH_C_FORWARDER"):
                continue  # no C compiler on this machine
            rounds[key].append(one_round(role, fanout, gso=gso, code_root=code_root))
    return rounds


def cpu_per_packet(result: dict) -> tuple[float, float]:
    """(user, system) CPU µs of the forwarding process per packet it sent, over the busy window."""
    packets = result["packets_out"] or 1
    return result["user_seconds"] / packets * 1e6, result["system_seconds"] / packets * 1e6
