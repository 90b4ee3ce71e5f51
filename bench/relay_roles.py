"""The child processes of `make bench-relay` (bench/relay_bench.py --role ...): the load generator and the
forwarders it measures (a bare Python one, the C one, the data plane), each printing its figures as JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import struct
import sys
import time

from relay_lessons import configure_mix, mix_warmup_packets, run_mix_generator
from relay_setup import FORWARDER_CPU, GENERATOR_BURST, LOAD_CPU, SECRET, WARMUP_PACKETS, cpu_seconds, pin
from relay_trace import trace_engine, trace_summary
from relay_wire import PACKET_BYTES, RTP_HEADER, SEND_STAMP, SOL_UDP, UDP_SEGMENT


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


def run_c(arguments: argparse.Namespace) -> None:
    binary = os.environ["RELAY_BENCH_C_FORWARDER"]
    os.execv(binary, [binary, str(FORWARDER_CPU), *map(str, arguments.sinks)])
