"""Benchmark of the classroom relay data plane (``make bench-relay``).

Prints, in one run, with the forwarder pinned to one core (the load generator and sinks on another):
- output packets/s and Mbit/s at fan-out 1→1, 1→4, 1→16: a bare recv_into/send Python forwarder, the
  data plane with all logic on (admission, layer selection, rewriting, pacing with budgets that do not
  throttle, NACK cache, metrics exporter), and the same with UDP GSO; ratios to bare, median of rounds;
- packet loss and p50/p99 added latency at 20 000 packets/s, 1→4 (send time inside the payload),
  against a direct generator→sink baseline measured the same way;
- peak resident memory of the data plane for 1 master → 16 branches, 3 simulcast layers, NACK cache on.
Everything runs on 127.0.0.1, every load loop is bounded by packets and time.
"""

from __future__ import annotations

import argparse
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

PACKET_BYTES = 1200
WARMUP_PACKETS = 150
BURST_SECONDS = 0.5
ROUNDS = 3
FANOUTS = (1, 4, 16)
FORWARDER_CPU = 0
LOAD_CPU = 1
SECRET = "bench-secret"
RTP_HEADER = struct.Struct("!BBHII")
SEND_STAMP = struct.Struct("!Q")
UDP_SEGMENT = 103
SOL_UDP = 17


def pin(cpu: int) -> None:
    available = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {available[cpu % len(available)]})


# --------------------------------------------------------------------------- child roles
def run_generator(arguments: argparse.Namespace) -> None:
    """Warm-up (keyframes, so the relay picks a layer), then a bounded burst; prints packets sent."""
    pin(LOAD_CPU)
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
    else:  # flood with GSO bursts of 64 packets: the forwarder, not the generator, must be the limit
        burst = bytearray(PACKET_BYTES * 64)
        burst_view = memoryview(burst)
        sock.connect(destination)
        option = struct.pack("=H", PACKET_BYTES)
        while time.monotonic() < deadline and sent < arguments.max_packets:
            for index in range(64):
                fill(burst, index * PACKET_BYTES, index % len(ssrcs), False)
            try:
                sock.sendmsg((burst_view,), ((SOL_UDP, UDP_SEGMENT, option),))
            except OSError:
                for index in range(64):
                    sock.send(burst_view[index * PACKET_BYTES : (index + 1) * PACKET_BYTES])
            sent += 64
    print(json.dumps({"sent": sent}), flush=True)


def _measure(read_counters, step, idle_seconds: float = 0.3, timeout: float = 6.0) -> dict:
    """Drive ``step`` until the burst is over; rate over the busy period after the warm-up."""
    start_time = start_out = None
    last_time = last_out = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        step()
        packets_in, packets_out = read_counters()
        now = time.monotonic()
        if start_time is None:
            if packets_in > WARMUP_PACKETS + 64:
                start_time, start_out = now, packets_out
                last_time, last_out = now, packets_out
            continue
        if packets_out != last_out:
            last_time, last_out = now, packets_out
        elif now - last_time > idle_seconds:
            break
    if start_time is None or last_time <= start_time:
        return {"packets_per_second": 0.0, "packets_out": 0}
    forwarded = last_out - start_out
    return {"packets_per_second": forwarded / (last_time - start_time), "packets_out": forwarded}


def run_bare(arguments: argparse.Namespace) -> None:
    """The reference: blocking recv_into, one connect()ed socket per receiver, send."""
    pin(FORWARDER_CPU)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    outputs = []
    for port in arguments.sinks:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.connect(("127.0.0.1", port))
        outputs.append(out)
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    buffer = bytearray(2048)
    view = memoryview(buffer)
    counters = [0, 0]

    def step() -> None:
        for _ in range(256):
            try:
                size = sock.recv_into(buffer)
            except TimeoutError:
                return
            packet = view[:size]
            for out in outputs:
                try:  # noqa: SIM105  (a context manager per send would slow the reference down)
                    out.send(packet)
                except OSError:
                    pass
            counters[0] += 1
            counters[1] += len(outputs)

    result = _measure(lambda: (counters[0], counters[1]), step)
    print(json.dumps(result), flush=True)


def run_engine(arguments: argparse.Namespace) -> None:
    """The data plane with all its logic, configured as the control plane would."""
    pin(FORWARDER_CPU)
    from services.classroom_relay.dataplane.admission import issue_token
    from services.classroom_relay.dataplane.engine import Engine, EngineConfig
    from services.classroom_relay.dataplane.metrics import serve_metrics

    engine = Engine(EngineConfig(use_gso=arguments.gso))
    serve_metrics(engine.snapshot_locked, 0)  # exporter on (port 0: any free port); scraped below
    engine.set_secrets([SECRET.encode()])
    engine.set_session("bench", "master")
    for index, port in enumerate(arguments.sinks):
        engine.set_branch("bench", f"branch-{index}", ("127.0.0.1", port), budget_bytes_per_second=1e9)
    token = issue_token(SECRET.encode(), "bench", "master", 600)
    assert engine.register_sender("bench", "master", token, ("127.0.0.1", arguments.source_port)) == 0
    print(json.dumps({"port": engine.media_address[1]}), flush=True)
    outputs = engine.all_outputs

    def counters() -> tuple[int, int]:
        packets_in = sum(layer.packets_in for layer in engine.layers.values())
        return packets_in, outputs[0].packets_out * len(outputs)

    result = _measure(counters, lambda: engine.run_once(0.05))
    snapshot = engine.snapshot_locked()
    result["drops"] = {reason: count for reason, count in snapshot["drops"].items() if count}
    result["gso"] = engine.gso_enabled
    result["layers"] = len(engine.layers)
    result["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------- orchestration
def make_sinks(count: int) -> list[socket.socket]:
    sinks = []
    for _ in range(count):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        sinks.append(sink)
    return sinks


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn(role: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, *extra], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )


def read_json(process: subprocess.Popen, timeout: float = 15.0) -> dict:
    ready = select.select([process.stdout], [], [], timeout)[0]
    if not ready:
        process.kill()
        raise RuntimeError("benchmark child did not answer in time")
    return json.loads(process.stdout.readline())


def drain(sinks: list[socket.socket], until: float, latencies: list[int] | None = None) -> int:
    """Read sinks until ``until``; returns packets received, recording latency when asked."""
    poller = select.epoll()
    for sink in sinks:
        poller.register(sink.fileno(), select.EPOLLIN)
    by_fd = {sink.fileno(): sink for sink in sinks}
    buffer = bytearray(2048)
    received = 0
    while time.monotonic() < until:
        for fd, _event in poller.poll(0.05):
            sink = by_fd[fd]
            while True:
                try:
                    size = sink.recv_into(buffer)
                except BlockingIOError:
                    break
                arrived = time.monotonic_ns()
                received += 1
                if latencies is not None and size >= 21:
                    latencies.append(arrived - SEND_STAMP.unpack_from(buffer, 13)[0])
    poller.close()
    return received


def one_round(role: str, fanout: int, gso: bool = False, layers: int = 1) -> dict:
    sinks = make_sinks(fanout)
    source_port = free_port()
    extra = ["--sinks", *[str(sink.getsockname()[1]) for sink in sinks], "--source-port", str(source_port)]
    if gso:
        extra.append("--gso")
    forwarder = spawn(role, *extra)
    try:
        port = read_json(forwarder)["port"]
        generator = spawn("generator", "--port", str(port), "--source-port", str(source_port),
                          "--seconds", str(BURST_SECONDS), "--layers", str(layers))  # fmt: skip
        drain(sinks, time.monotonic() + BURST_SECONDS + 1.2)  # keep sinks from filling; counts not used
        sent = read_json(generator)["sent"]
        result = read_json(forwarder)
        result["sent"] = sent
        generator.wait(timeout=5)
        forwarder.wait(timeout=5)
        return result
    finally:
        for process in (forwarder,):
            if process.poll() is None:
                process.kill()
        for sink in sinks:
            sink.close()


def latency_round(fanout: int, direct: bool) -> dict:
    pps, seconds = 20_000, 1.5
    sinks = make_sinks(fanout)
    source_port = free_port()
    forwarder = None
    try:
        if direct:
            port = sinks[0].getsockname()[1]
        else:
            forwarder = spawn("engine", "--sinks", *[str(s.getsockname()[1]) for s in sinks],
                              "--source-port", str(source_port), "--gso")  # fmt: skip
            port = read_json(forwarder)["port"]
        limit = str(int(pps * seconds) + WARMUP_PACKETS)
        generator = spawn("generator", "--port", str(port), "--source-port", str(source_port),
                          "--seconds", str(seconds), "--pps", str(pps), "--max-packets", limit)  # fmt: skip
        latencies: list[int] = []
        start = time.monotonic()
        # Only the first receiver is read and timed (all get the same packets): reading four at 20 k/s
        # each in this Python process would measure this process, not the relay.
        received = drain(sinks[:1], start + seconds + 1.0, latencies)
        sent = read_json(generator)["sent"]
        generator.wait(timeout=5)
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
        }
    finally:
        if forwarder is not None:
            forwarder.kill()
            forwarder.wait(timeout=5)
        for sink in sinks:
            sink.close()


def main() -> None:
    began = time.monotonic()
    pin(LOAD_CPU)  # this process reads the sinks: keep it off the forwarder's core
    print(f"relay data plane benchmark — forwarder on CPU {FORWARDER_CPU}, load on CPU {LOAD_CPU}, "
          f"{PACKET_BYTES}-byte packets, median of {ROUNDS} rounds, 127.0.0.1")  # fmt: skip
    header = f"{'fan-out':>8} {'variant':<22} {'out pkt/s':>12} {'Mbit/s':>9} {'× bare':>7}"
    print(header)
    print("-" * len(header))
    summary = {}
    for fanout in FANOUTS:
        medians = {}
        for variant, role, gso in (("bare recv/send", "bare", False), ("full logic", "engine", False),
                                   ("full logic + GSO", "engine", True)):  # fmt: skip
            rates = []
            details = {}
            for _ in range(ROUNDS):
                details = one_round(role, fanout, gso=gso)
                rates.append(details["packets_per_second"])
            medians[variant] = statistics.median(rates)
            ratio = medians[variant] / medians["bare recv/send"] if medians["bare recv/send"] else float("nan")
            gso_note = "" if not gso or details.get("gso") else " (GSO unavailable)"
            print(f"{'1→' + str(fanout):>8} {variant + gso_note:<22} {medians[variant]:>12,.0f} "
                  f"{medians[variant] * PACKET_BYTES * 8 / 1e6:>9,.0f} {ratio:>7.2f}")  # fmt: skip
        summary[fanout] = medians
    print()
    direct = latency_round(1, direct=True)
    relayed = latency_round(4, direct=False)
    print("latency at 20 000 packets/s, 1→4 (GSO on), send timestamp in the payload:")
    print(f"  direct generator→sink:  p50 {direct['p50_us']:7.1f} µs   p99 {direct['p99_us']:7.1f} µs")
    print(f"  through the relay:      p50 {relayed['p50_us']:7.1f} µs   p99 {relayed['p99_us']:7.1f} µs   "
          f"loss {relayed['loss'] * 100:.3f} % of {relayed['expected_steady']} sent (receiver 1 of 4)")  # fmt: skip
    print(f"  added by the relay:     p50 {relayed['p50_us'] - direct['p50_us']:7.1f} µs   "
          f"p99 {relayed['p99_us'] - direct['p99_us']:7.1f} µs   (goals: ≤ 100 µs, ≤ 1000 µs)")  # fmt: skip
    print()
    memory = one_round("engine", 16, gso=True, layers=3)
    print(f"peak RSS, 1 master → 16 branches, {memory['layers']} simulcast layers, NACK cache "
          f"(8192 × 1500 B ring) on: {memory['max_rss_bytes'] / 2**20:.1f} MiB (budget 150 MB)")  # fmt: skip
    print()
    goals = []
    for fanout, medians in summary.items():
        bare = medians["bare recv/send"]
        goals.append(f"1→{fanout}: full {medians['full logic'] / bare:.2f}× (goal ≥ 0.9), "
                     f"GSO {medians['full logic + GSO'] / bare:.2f}× (goal ≥ 2)")  # fmt: skip
    print("goals: " + "; ".join(goals))
    print(f"benchmark wall time {time.monotonic() - began:.0f} s; this process peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")  # fmt: skip


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=("main", "generator", "bare", "engine"), default="main")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--source-port", type=int, default=0)
    parser.add_argument("--sinks", type=int, nargs="*", default=[])
    parser.add_argument("--seconds", type=float, default=BURST_SECONDS)
    parser.add_argument("--pps", type=int, default=0)
    parser.add_argument("--max-packets", type=int, default=2_000_000)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--gso", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_arguments()
    {"main": lambda _args: main(), "generator": run_generator, "bare": run_bare, "engine": run_engine}[arguments.role](
        arguments
    )
