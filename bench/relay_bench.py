"""Benchmark of the classroom relay data plane (``make bench-relay``).

Prints, in one run, with the forwarder pinned to one core (the load generator on another):
- output packets/s and Mbit/s at fan-out 1→1, 1→4, 1→16: a bare recv_into/send Python forwarder, the
  data plane with all logic on (admission, layer selection, rewriting, pacing with budgets that do not
  throttle, NACK cache, metrics exporter), and the same with UDP GSO. The rounds are interleaved (bare,
  full, GSO, bare, full, GSO, …) so that load from elsewhere hits all variants alike, and the ratios to
  bare are taken per round, then the median of those is reported;
- CPU time (user + system) of the forwarding process per forwarded packet over the same busy window: far
  less sensitive to other load on the machine than packets/s, since time spent waiting for the CPU is not
  counted (hardware instruction counters are not available in this VM);
- packet loss and p50/p99 added latency at 20 000 packets/s, 1→4: relay path minus direct
  generator→sink path, measured in interleaved pairs in the same run (send time inside the payload,
  arrival = the kernel's receive time stamp at the receiver's socket);
- the same rounds for a minimal C recvmmsg/sendmmsg forwarder (bench/relay_forwarder.c, built with the
  system ``cc``): the machine's per-packet limit, reported beside the bare Python one;
- peak resident memory of the data plane for 1 master → 16 branches, 3 simulcast layers, NACK cache on, and
  for a 1 → 200 fan-out (one output socket per receiving classroom);
- two lessons (bench/relay_lessons.py), every stream from its own port: audio at 50 packets/s + a camera in
  3 simulcast layers + courseware to 16 classrooms, and audio + one camera layer to 200 (名校网络课堂);
  out packets/s, CPU per packet and peak RSS, 3 interleaved rounds each;
- a traced latency round (bench/relay_trace.py): where a packet's time goes inside the relay; and the
  latency with ``--busy-poll-us``;
- with ``--compare-root DIR``: another checkout's data plane in the same rounds (throughput, lessons,
  latency), so before/after figures come from one run;
- the command, and the machine's load average at the start and at the end.
Everything runs on 127.0.0.1, every load loop is bounded by packets and time; about 2 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relay_lessons import MIXES, configure_mix, mix_warmup_packets, run_mix_generator  # noqa: E402
from relay_trace import trace_engine, trace_summary  # noqa: E402
from relay_wire import PACKET_BYTES, RTP_HEADER, SEND_STAMP, SOL_UDP, UDP_SEGMENT  # noqa: E402

WARMUP_PACKETS = 150
BURST_SECONDS = 0.5
ROUNDS = 5
FANOUTS = (1, 4, 16)
LATENCY_PAIRS = 3
LATENCY_PPS = 20_000
LATENCY_SECONDS = 1.0
BUSY_POLL_US = 100.0  # the relay's --busy-poll-us in the latency rounds that turn it on
GENERATOR_BURST = 48  # 48 × 1200 B: under the 64 KiB a UDP GSO send may carry
SINK_RECEIVE_BUFFER = 256 << 10
CODE_ROOT = str(ROOT)
# The CPUs the benchmark may use, decided once by the main process: children inherit its pinned affinity,
# so their own would only offer the load core.
ALLOWED_CPUS = [int(cpu) for cpu in os.environ.get("RELAY_BENCH_CPUS", "").split(",") if cpu] or sorted(
    os.sched_getaffinity(0)
)
PRIORITY = -10  # nice value of every benchmark process (needs CAP_SYS_NICE; unchanged without it)
RSS_BUDGET_BYTES = 150e6
FORWARDER_CPU = 0
LOAD_CPU = 1
SECRET = "bench-secret"


def pin(cpu: int) -> None:
    """Pin to one core, at a raised priority (when allowed) so that other work on this shared machine
    preempts the benchmark less; every benchmark process gets the same, so the comparison stays fair."""
    os.sched_setaffinity(0, {ALLOWED_CPUS[cpu % len(ALLOWED_CPUS)]})
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, PRIORITY)


def cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process, all threads (getrusage: µs resolution, not clock ticks)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


# --------------------------------------------------------------------------- child roles
def run_generator(arguments: argparse.Namespace) -> None:
    """Warm-up (keyframes, so the relay picks a layer), then a bounded burst; prints packets sent."""
    pin(LOAD_CPU)
    if arguments.mix:
        run_mix_generator(arguments)
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind(("127.0.0.1", arguments.source_port))
    destination = ("127.0.0.1", arguments.port)
    ssrcs = [0x1000 + layer for layer in range(arguments.layers)]
    sequence = [0] * len(ssrcs)
    packet = bytearray(PACKET_BYTES)
    sent = 0

    def fill(buffer: bytearray, offset: int, layer: int, keyframe: bool) -> None:
        RTP_HEADER.pack_into(buffer, offset, 0x80, 96, sequence[layer] & 0xFFFF, (sequence[layer] // 5) * 3600,
                             ssrcs[layer])  # fmt: skip
        buffer[offset + 12] = 0x65 if keyframe else 0x41
        SEND_STAMP.pack_into(buffer, offset + 13, time.monotonic_ns())
        sequence[layer] += 1

    for index in range(WARMUP_PACKETS):
        for layer in range(len(ssrcs)):
            fill(packet, 0, layer, index % 10 == 0)
            sock.sendto(packet, destination)
            sent += 1
        time.sleep(0.002)
    time.sleep(0.05)
    deadline = time.monotonic() + arguments.seconds
    if arguments.pps:  # steady rate, for latency: send what is due, sleep until the next is due
        start = time.monotonic()
        while time.monotonic() < deadline and sent < arguments.max_packets:
            due = int((time.monotonic() - start) * arguments.pps)
            while sequence[0] < WARMUP_PACKETS + due:
                fill(packet, 0, 0, False)
                sock.sendto(packet, destination)
                sent += 1
            time.sleep(0.0001)
    else:  # flood with GSO bursts: the forwarder, not the generator, must be the limit
        # A whole burst of packets (header and first payload octet; the rest zero) packed with one call.
        pack_burst = struct.Struct("!" + f"BBHIIB{PACKET_BYTES - 13}x" * GENERATOR_BURST)
        burst = bytearray(pack_burst.size)
        burst_view = memoryview(burst)
        sock.connect(destination)
        option = struct.pack("=H", PACKET_BYTES)
        # Packet i of every burst belongs to layer i % layers; all layers advance by burst / layers packets.
        layer_count = len(ssrcs)
        per_layer = GENERATOR_BURST // layer_count
        fields = [0] * (6 * GENERATOR_BURST)
        fields[0::6] = [0x80] * GENERATOR_BURST
        fields[1::6] = [96] * GENERATOR_BURST
        fields[4::6] = [ssrcs[index % layer_count] for index in range(GENERATOR_BURST)]
        fields[5::6] = [0x41] * GENERATOR_BURST  # non-IDR slices
        packet_offsets = [sequence[index % layer_count] + index // layer_count for index in range(GENERATOR_BURST)]
        bursts = 0
        while time.monotonic() < deadline and sent < arguments.max_packets:
            numbers = [bursts * per_layer + offset for offset in packet_offsets]
            bursts += 1
            fields[2::6] = [number & 0xFFFF for number in numbers]
            fields[3::6] = [(number // 5 * 3600) & 0xFFFFFFFF for number in numbers]
            pack_burst.pack_into(burst, 0, *fields)
            try:
                sock.sendmsg((burst_view,), ((SOL_UDP, UDP_SEGMENT, option),))
            except OSError:
                for index in range(GENERATOR_BURST):
                    with contextlib.suppress(OSError):
                        sock.send(burst_view[index * PACKET_BYTES : (index + 1) * PACKET_BYTES])
            sent += GENERATOR_BURST
    print(json.dumps({"sent": sent}), flush=True)


def _measure(
    read_counters, step, idle_seconds: float = 0.3, timeout: float = 6.0, warmup: int = WARMUP_PACKETS
) -> dict:
    """Drive ``step`` until the burst is over; rate and CPU time over the busy period after the warm-up
    (``warmup`` packets in)."""
    start_time = start_out = start_in = None
    last_time = last_out = last_in = 0
    start_cpu = last_cpu = (0.0, 0.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        step()
        packets_in, packets_out = read_counters()
        now = time.monotonic()
        if start_time is None:
            if packets_in > warmup + 64:
                start_time, start_out, start_in = now, packets_out, packets_in
                last_time, last_out, last_in = now, packets_out, packets_in
                start_cpu = last_cpu = cpu_seconds()
            continue
        if packets_out != last_out:
            last_time, last_out, last_in = now, packets_out, packets_in
            last_cpu = cpu_seconds()
        elif now - last_time > idle_seconds:
            break
    if start_time is None or last_time <= start_time or last_out == start_out:
        return {"packets_per_second": 0.0, "packets_out": 0, "packets_in": 0, "user_seconds": 0.0,
                "system_seconds": 0.0}  # fmt: skip
    forwarded = last_out - start_out
    return {
        "packets_per_second": forwarded / (last_time - start_time),
        "packets_out": forwarded,
        "packets_in": last_in - start_in,
        "user_seconds": last_cpu[0] - start_cpu[0],
        "system_seconds": last_cpu[1] - start_cpu[1],
    }


def run_bare(arguments: argparse.Namespace) -> None:
    """The reference: a blocking recv_into, one connect()ed socket per receiver, send.

    The socket is blocking without a Python timeout (which would add a poll() before every recv); the
    kernel's SO_RCVTIMEO ends a recv after 50 ms of silence so the loop can stop.
    """
    pin(FORWARDER_CPU)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 50_000))
    sock.bind(("127.0.0.1", 0))
    outputs = []
    for port in arguments.sinks:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.connect(("127.0.0.1", port))
        outputs.append(out)
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    buffer = bytearray(2048)
    view = memoryview(buffer)
    counters = [0, 0]
    fanout = len(outputs)

    def step() -> None:
        received = 0
        try:
            for _ in range(256):
                size = sock.recv_into(buffer)
                packet = view[:size]
                for out in outputs:
                    try:  # noqa: SIM105  (a context manager per send would slow the reference down)
                        out.send(packet)
                    except OSError:
                        pass
                received += 1
        except (BlockingIOError, TimeoutError):
            pass
        counters[0] += received
        counters[1] += received * fanout

    result = _measure(lambda: (counters[0], counters[1]), step)
    result["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result), flush=True)


def _configure_session(engine, sinks: list[int], token: str, source_port: int) -> None:
    """The master's camera to every sink, in whichever form the measured checkout's data plane takes."""
    try:  # protocol 2: members, tracks, per-output ports
        from services.classroom_relay.dataplane.streams import TrackSpec
        from services.classroom_relay.dataplane.topology import MemberSpec, OutputSpec
    except ImportError:  # an older checkout (--code-root): master + branches
        engine.set_session("bench", "master")
        for index, port in enumerate(sinks):
            engine.set_branch("bench", f"branch-{index}", ("127.0.0.1", port), budget_bytes_per_second=1e9)
        assert engine.register_sender("bench", "master", token, ("127.0.0.1", source_port)) == 0
        return
    members = [MemberSpec("master", (TrackSpec("camera", "video", "camera", 90_000),))]
    members += [
        MemberSpec(f"branch-{index}", (), "127.0.0.1", 1e9, (OutputSpec("master", "camera", port),))
        for index, port in enumerate(sinks)
    ]
    _outputs, refused = engine.set_session("bench", members)
    assert not refused, refused
    assert engine.register_sender("bench", "master", "camera", token, ("127.0.0.1", source_port)) == 0


def run_engine(arguments: argparse.Namespace) -> None:
    """The data plane with all its logic, configured as the control plane would."""
    pin(FORWARDER_CPU)
    if arguments.realtime:
        # Latency rounds only (1 s, the relay mostly waits in epoll): other engineers' work on this shared
        # core must not preempt it, or the figure measures their load instead of the relay.
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    sys.path.insert(0, arguments.code_root)  # --code-root: compare another checkout's data plane
    from prometheus_client import generate_latest

    from services.classroom_relay.dataplane.admission import issue_token
    from services.classroom_relay.dataplane.engine import Engine, EngineConfig
    from services.classroom_relay.dataplane.metrics import serve_metrics

    options = {"use_gso": arguments.gso}
    if arguments.busy_poll_us:  # only checkouts that have it are asked for it
        options["busy_poll_seconds"] = arguments.busy_poll_us / 1e6
    engine = Engine(EngineConfig(**options))
    registry = serve_metrics(engine.snapshot_locked, 0)  # exporter on (port 0: any free port)
    engine.set_secrets([SECRET.encode()])
    token = issue_token(SECRET.encode(), "bench", "master", 600)
    if arguments.mix:
        watched = configure_mix(engine, arguments.mix, arguments.sinks, token, arguments.source_ports)
        warmup = mix_warmup_packets(arguments.mix)
    else:
        _configure_session(engine, arguments.sinks, token, arguments.source_port)
        watched = engine.all_outputs[:1]
        warmup = WARMUP_PACKETS
    print(json.dumps({"port": engine.media_address[1]}), flush=True)
    # Every receiving classroom gets the same packets: count the first one's, times the classrooms.
    receivers = len(engine.all_outputs) // len(watched)
    layers = engine.layers

    def counters() -> tuple[int, int]:
        packets_in = sum(layer.packets_in for layer in layers.values())
        return packets_in, sum(output.packets_out for output in watched) * receivers

    records = trace_engine(engine) if arguments.trace else None
    if hasattr(engine, "prepare_loop"):  # as Engine.run does before its loop (absent in older checkouts)
        engine.prepare_loop()
    result = _measure(counters, lambda: engine.run_once(0.05), warmup=warmup)
    result["metrics_bytes"] = len(generate_latest(registry))  # one scrape's worth of work, after the burst
    snapshot = engine.snapshot_locked()
    result["drops"] = {reason: count for reason, count in snapshot["drops"].items() if count}
    result["gso"] = engine.gso_enabled
    result["scheduler"] = "SCHED_FIFO 1" if os.sched_getscheduler(0) == os.SCHED_FIFO else f"nice {os.nice(0)}"
    result["layers"] = len(engine.layers)
    result["outputs"] = len(engine.all_outputs)
    result["followed"] = sorted({output.track.name + f":{output.forwarder.layer_ssrc:#x}" for output in watched})
    result["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if records is not None:
        result["trace"] = trace_summary(records)
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------- orchestration
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
        [sys.executable, __file__, "--role", role, "--code-root", code_root or CODE_ROOT, *extra],
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
COMPARE_ROOT = ""  # --compare-root: its data plane runs as two more variants in the same rounds


def variants() -> list[tuple[str, str, str, bool, str | None]]:
    """(key, label, role, GSO, code root) of every variant of a round, in the order they run."""
    found: list[tuple[str, str, str, bool, str | None]] = [(*variant, None) for variant in VARIANTS]
    if COMPARE_ROOT:
        found += [("full_cmp", "full [compared]", "engine", False, COMPARE_ROOT),
                  ("gso_cmp", "GSO [compared]", "engine", True, COMPARE_ROOT)]  # fmt: skip
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


def run_c(arguments: argparse.Namespace) -> None:
    binary = os.environ["RELAY_BENCH_C_FORWARDER"]
    os.execv(binary, [binary, str(FORWARDER_CPU), *map(str, arguments.sinks)])


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


def print_throughput(fanout: int, rounds: dict[str, list[dict]]) -> dict[str, float]:
    bare_rates = [result["packets_per_second"] for result in rounds["bare"]]
    bare_cpu = statistics.median(sum(cpu_per_packet(result)) for result in rounds["bare"])
    ratios = {}
    c_cpu = [sum(cpu_per_packet(result)) for result in rounds["c"]]
    for key, label, _role, gso, _code_root in variants():
        if not rounds[key]:
            continue
        rates = [result["packets_per_second"] for result in rounds[key]]
        per_round = [rate / bare if bare else float("nan") for rate, bare in zip(rates, bare_rates, strict=True)]
        ratio = statistics.median(per_round)
        cpu = [cpu_per_packet(result) for result in rounds[key]]
        user = statistics.median(value[0] for value in cpu)
        system = statistics.median(value[1] for value in cpu)
        total = statistics.median(sum(value) for value in cpu)
        rate = statistics.median(rates)
        drops = {}
        for result in rounds[key]:
            for reason, count in result.get("drops", {}).items():
                drops[reason] = drops.get(reason, 0) + count
        note = " (GSO unavailable)" if gso and not rounds[key][-1].get("gso") else ""
        note += f" drops {drops}" if drops else ""
        print(f"{'1→' + str(fanout):>6} {label:<17} {rate:>10,.0f} {rate * PACKET_BYTES * 8 / 1e6:>7,.0f} "
              f"{ratio:>6.2f} {min(per_round):>5.2f}–{max(per_round):<5.2f} {user:>6.2f} {system:>6.2f} "
              f"{total:>6.2f} {bare_cpu / total if total else float('nan'):>6.2f}{note}")  # fmt: skip
        ratios[key] = ratio
        ratios[key + "_cpu"] = bare_cpu / total if total else float("nan")
        if c_cpu:  # C's CPU per packet ÷ this one's, round by round (both ran in the same round), median
            ratios[key + "_c_cpu"] = statistics.median(
                c / sum(value) if sum(value) else float("nan") for c, value in zip(c_cpu, cpu, strict=True)
            )
    return ratios


LESSONS = (("av", 16, "A/V lesson 1→16: audio 50 pkt/s + camera (3 simulcast layers) + courseware"),
           ("wide", 200, "名校网络课堂 1→200: audio 50 pkt/s + one camera layer to every classroom"))  # fmt: skip
LESSON_ROUNDS = 3


def lessons() -> dict[str, dict[str, float]]:
    """LESSON_ROUNDS interleaved rounds of each lesson mix, full logic with and without GSO (and the compared
    checkout's); out packets/s, CPU per packet, peak RSS (the highest of the rounds)."""
    keys = [(key, label, gso, code_root) for key, label, role, gso, code_root in variants() if role == "engine"]
    figures: dict[str, dict[str, float]] = {}
    for mix, fanout, title in LESSONS:
        rounds: dict[str, list[dict]] = {key: [] for key, *_ in keys}
        for _ in range(LESSON_ROUNDS):
            for key, _label, gso, code_root in keys:
                rounds[key].append(one_round("engine", fanout, gso=gso, mix=mix, code_root=code_root))
        first = rounds["full"][-1]
        print(f"{title} ({first['outputs']} outputs, {first['layers']} incoming SSRCs; classroom 1 follows "
              f"{', '.join(first['followed'])}), median of {LESSON_ROUNDS} interleaved rounds:")  # fmt: skip
        for key, label, _gso, _code_root in keys:
            results = rounds[key]
            rate = statistics.median(result["packets_per_second"] for result in results)
            cpu = statistics.median(sum(cpu_per_packet(result)) for result in results)
            rss = max(result["max_rss_bytes"] for result in results)
            drops = {}
            for result in results:
                for reason, count in result.get("drops", {}).items():
                    drops[reason] = drops.get(reason, 0) + count
            print(f"  {label:<17} {rate:>10,.0f} out pkt/s  {cpu:>5.2f} CPU µs/packet  peak RSS {rss / 1e6:>6.1f} MB"
                  f"{f'  drops {drops}' if drops else ''}")  # fmt: skip
            figures[f"{mix}_{key}"] = {"rate": rate, "cpu": cpu, "rss": rss}
    return figures


def latency() -> dict:
    """Direct and relayed rounds, interleaved (direct, relay[, compared checkout's relay]); added = relayed −
    direct of each group, median. Then one traced round per checkout: where a packet's time goes."""
    groups = []
    for _ in range(LATENCY_PAIRS):
        group = [latency_round(1, direct=True), latency_round(4, direct=False),
                 latency_round(4, direct=False, busy_poll_us=BUSY_POLL_US)]  # fmt: skip
        if COMPARE_ROOT:
            group.append(latency_round(4, direct=False, code_root=COMPARE_ROOT))
        groups.append(group)
    print(f"latency at {LATENCY_PPS:,} packets/s, 1→4 (GSO on), send time stamp in the payload, arrival = the "
          "kernel's receive time stamp at the receiver's socket, "
          f"{LATENCY_PAIRS} interleaved groups of {LATENCY_SECONDS:.0f} s rounds; relay asks for SCHED_FIFO 1 "
          "(granted if root/CAP_SYS_NICE):")  # fmt: skip
    columns = ["relay", "busy poll"] + (["compared"] if COMPARE_ROOT else [])
    print(f"  {'group':>5} {'direct p50':>11} {'p99':>8}" + "".join(
        f" {name + ' p50':>13} {'p99':>8} {'added p50':>10} {'p99':>8} {'loss':>8}" for name in columns))  # fmt: skip
    for number, (direct, *relayed) in enumerate(groups, 1):
        line = f"  {number:>5} {direct['p50_us']:>9.1f}µs {direct['p99_us']:>6.0f}µs"
        for result in relayed:
            added_p50, added_p99 = result["p50_us"] - direct["p50_us"], result["p99_us"] - direct["p99_us"]
            line += (f" {result['p50_us']:>11.1f}µs {result['p99_us']:>6.0f}µs {added_p50:>8.1f}µs "
                     f"{added_p99:>6.0f}µs {result['loss'] * 100:>6.3f} %")  # fmt: skip
        print(line)
    figures = {}
    for index, name in enumerate(columns, 1):
        added_p50 = statistics.median(group[index]["p50_us"] - group[0]["p50_us"] for group in groups)
        added_p99 = statistics.median(group[index]["p99_us"] - group[0]["p99_us"] for group in groups)
        loss = statistics.median(group[index]["loss"] for group in groups)
        sent = sum(group[index]["expected_steady"] for group in groups)
        print(f"  added by the {name} relay (median of groups): p50 {added_p50:.1f} µs, p99 {added_p99:.0f} µs "
              f"(goals ≤ 100 µs, ≤ 1000 µs); loss {loss * 100:.3f} % of {sent} steady packets "
              "(receiver 1 of 4)")  # fmt: skip
        figures[name] = {"p50": added_p50, "p99": added_p99, "loss": loss}
    traced = [("relay", latency_round(4, direct=False, trace=True)),
              ("busy poll", latency_round(4, direct=False, trace=True, busy_poll_us=BUSY_POLL_US))]  # fmt: skip
    if COMPARE_ROOT:
        traced.append(("compared", latency_round(4, direct=False, trace=True, code_root=COMPARE_ROOT)))
    print("  where the time goes (one more round each, with time stamps in the relay; µs, median / p99 over its "
          "batches):")  # fmt: skip
    steps = [key for key in traced[0][1]["trace"] if key not in ("batches", "mean_packets")]
    print(f"    {'':<38}" + "".join(f" {name:>17}" for name, _result in traced))
    missing = (float("nan"), float("nan"))
    for step in steps:
        cells = [result["trace"].get(step, missing) for _name, result in traced]
        print(f"    {step:<38}" + "".join(f" {median:>8.1f} / {p99:>6.0f}" for median, p99 in cells))
    print(f"    {'packets per batch (mean)':<38}" + "".join(
        f" {result['trace'].get('mean_packets', float('nan')):>17.1f}" for _name, result in traced))  # fmt: skip
    return figures["relay"] | {"compared": figures.get("compared"), "busy_poll": figures["busy poll"]}


def main() -> None:
    began = time.monotonic()
    load_start = os.getloadavg()
    os.environ["RELAY_BENCH_CPUS"] = ",".join(str(cpu) for cpu in ALLOWED_CPUS)
    pin(LOAD_CPU)  # this process reads the latency sinks: keep it off the forwarder's core
    c_forwarder = build_c_forwarder()
    if c_forwarder is not None:
        os.environ["RELAY_BENCH_C_FORWARDER"] = c_forwarder
    print("command: " + " ".join([sys.executable, *sys.argv]))
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} "
          f"({os.cpu_count()} CPUs); data plane code from {CODE_ROOT}"
          f"{f', compared with {COMPARE_ROOT}' if COMPARE_ROOT else ''}")  # fmt: skip
    print(f"forwarder on CPU {FORWARDER_CPU}, generator on CPU {LOAD_CPU} (nice {os.getpriority(os.PRIO_PROCESS, 0)}), "
          f"{PACKET_BYTES}-byte packets, "
          f"{ROUNDS} interleaved rounds of {BURST_SECONDS} s per variant, 127.0.0.1")  # fmt: skip
    print()
    print("throughput (median over rounds; × bare = median of the per-round ratios, with their range);")
    print("CPU µs = CPU time (user + system, all threads) of the forwarding process per packet sent over the busy")
    print("window, median of rounds (the user/sys split is the kernel's tick-sampled estimate, the sum is exact);")
    print("CPU × = bare's CPU/packet ÷ this one: what the forwarder would reach with the core to itself")
    header = (f"{'fan':>6} {'variant':<17} {'out pkt/s':>10} {'Mbit/s':>7} {'× bare':>6} {'range':^11} "
              f"{'~user':>6} {'~sys':>6} {'CPU µs':>6} {'CPU ×':>6}")  # fmt: skip
    print(header)
    print("-" * len(header))
    summary = {fanout: print_throughput(fanout, throughput(fanout)) for fanout in FANOUTS}
    print()
    added = latency()
    print()
    memory = one_round("engine", 16, gso=True, layers=3)
    print(f"peak RSS of the data plane, 1 master → 16 branches, {memory['layers']} simulcast layers, NACK cache "
          f"(8192 × 1500 B ring) on: {memory['max_rss_bytes'] / 1e6:.1f} MB "
          f"(budget {RSS_BUDGET_BYTES / 1e6:.0f} MB)")  # fmt: skip
    wide = one_round("engine", 200, gso=True)
    print(f"1 master → 200 receiving classrooms (camera track, one layer, an output socket each): "
          f"{wide['packets_per_second']:,.0f} out pkt/s, peak RSS {wide['max_rss_bytes'] / 1e6:.1f} MB "
          f"(budget {RSS_BUDGET_BYTES / 1e6:.0f} MB)")  # fmt: skip
    print()
    lesson = lessons()
    print()
    for fanout, ratios in summary.items():
        if "c" in ratios:
            print(f"1→{fanout} against the C recvmmsg/sendmmsg forwarder: full {ratios['full'] / ratios['c']:.2f}×, "
                  f"GSO {ratios['gso'] / ratios['c']:.2f}× (goals ≥ 1.0×, ≥ 2×); by CPU per packet: full "
                  f"{ratios['full_cpu'] / ratios['c_cpu']:.2f}×, GSO {ratios['gso_cpu'] / ratios['c_cpu']:.2f}×")
        full_met = "met" if ratios["full"] >= 0.9 else "MISSED"
        print(f"goal 1→{fanout}: full {ratios['full']:.2f}× bare (≥ 0.9: {full_met}), "
              f"GSO {ratios['gso']:.2f}× (≥ 2: {'met' if ratios['gso'] >= 2 else 'MISSED'}); "
              f"by CPU per packet: full {ratios['full_cpu']:.2f}×, GSO {ratios['gso_cpu']:.2f}×")  # fmt: skip
    for key, label in (("full", "full logic"), ("gso", "full logic + GSO")):
        if key + "_c_cpu" in summary[16]:
            compared = f"; compared checkout {summary[16][key + '_cmp_c_cpu']:.2f}×" if COMPARE_ROOT else ""
            print(f"1→16 {label}, packets per CPU-second ÷ the C forwarder's (median of per-round ratios): "
                  f"{summary[16][key + '_c_cpu']:.2f}×{compared} (goal ≥ {'2' if key == 'gso' else '1.0'}×)")
    wide_rss = max(lesson["wide_full"]["rss"], lesson["wide_gso"]["rss"])
    print(f"goal peak RSS at 1→200 with audio + video: {wide_rss / 1e6:.1f} MB "
          f"({'met' if wide_rss <= RSS_BUDGET_BYTES else 'MISSED'}, ≤ {RSS_BUDGET_BYTES / 1e6:.0f} MB)")
    print(f"goal latency: p50 {added['p50']:.1f} µs ({'met' if added['p50'] <= 100 else 'MISSED'}), "
          f"p99 {added['p99']:.0f} µs ({'met' if added['p99'] <= 1000 else 'MISSED'})"
          + f"; with --busy-poll-us {BUSY_POLL_US:.0f}: p50 {added['busy_poll']['p50']:.1f} µs, "
          f"p99 {added['busy_poll']['p99']:.0f} µs"
          + (f"; compared checkout p50 {added['compared']['p50']:.1f} µs, p99 {added['compared']['p99']:.0f} µs"
             if added.get("compared") else ""))  # fmt: skip
    load_end = os.getloadavg()
    print(f"load average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}; "
          f"benchmark wall time {time.monotonic() - began:.0f} s")  # fmt: skip


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=("main", "generator", "bare", "c", "engine"), default="main")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--source-port", type=int, default=0)
    parser.add_argument("--sinks", type=int, nargs="*", default=[])
    parser.add_argument("--seconds", type=float, default=BURST_SECONDS)
    parser.add_argument("--pps", type=int, default=0)
    parser.add_argument("--max-packets", type=int, default=2_000_000)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--mix", choices=sorted(MIXES), default="", help="generator/engine: a lesson's streams")
    parser.add_argument("--source-ports", type=int, nargs="*", default=[])
    parser.add_argument(
        "--compare-root", default="", help="another checkout whose data plane runs in the same rounds as this one"
    )
    parser.add_argument("--gso", action="store_true")
    parser.add_argument("--realtime", action="store_true", help="engine: SCHED_FIFO (latency rounds)")
    parser.add_argument("--trace", action="store_true", help="engine: time stamps per batch (latency breakdown)")
    parser.add_argument("--busy-poll-us", type=float, default=0.0, help="engine: EngineConfig.busy_poll_seconds")
    parser.add_argument("--code-root", default=str(ROOT), help="checkout whose data plane to measure")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_arguments()
    CODE_ROOT = arguments.code_root
    COMPARE_ROOT = str(Path(arguments.compare_root).resolve()) if arguments.compare_root else ""
    {"main": lambda _args: main(), "generator": run_generator, "bare": run_bare, "c": run_c,
     "engine": run_engine}[arguments.role](
        arguments
    )
