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
This file reports; bench/relay_rounds.py runs the rounds, bench/relay_roles.py is each child process,
bench/relay_setup.py what they share.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relay_lessons import MIXES  # noqa: E402
from relay_roles import run_bare, run_c, run_engine, run_generator  # noqa: E402
from relay_rounds import build_c_forwarder, cpu_per_packet, latency_round, one_round, throughput, variants  # noqa: E402
from relay_setup import (  # noqa: E402
    ALLOWED_CPUS,
    BURST_SECONDS,
    BUSY_POLL_US,
    FANOUTS,
    FORWARDER_CPU,
    LATENCY_PAIRS,
    LATENCY_PPS,
    LATENCY_SECONDS,
    LOAD_CPU,
    ROUNDS,
    RSS_BUDGET_BYTES,
    RUN,
    pin,
)
from relay_wire import PACKET_BYTES  # noqa: E402


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
        if RUN.compare_root:
            group.append(latency_round(4, direct=False, code_root=RUN.compare_root))
        groups.append(group)
    print(f"latency at {LATENCY_PPS:,} packets/s, 1→4 (GSO on), send time stamp in the payload, arrival = the "
          "kernel's receive time stamp at the receiver's socket, "
          f"{LATENCY_PAIRS} interleaved groups of {LATENCY_SECONDS:.0f} s rounds; relay asks for SCHED_FIFO 1 "
          "(granted if root/CAP_SYS_NICE):")  # fmt: skip
    columns = ["relay", "busy poll"] + (["compared"] if RUN.compare_root else [])
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
    if RUN.compare_root:
        traced.append(("compared", latency_round(4, direct=False, trace=True, code_root=RUN.compare_root)))
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
          f"({os.cpu_count()} CPUs); data plane code from {RUN.code_root}"
          f"{f', compared with {RUN.compare_root}' if RUN.compare_root else ''}")  # fmt: skip
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
            compared = f"; compared checkout {summary[16][key + '_cmp_c_cpu']:.2f}×" if RUN.compare_root else ""
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
    RUN.code_root = arguments.code_root
    RUN.compare_root = str(Path(arguments.compare_root).resolve()) if arguments.compare_root else ""
    {"main": lambda _args: main(), "generator": run_generator, "bare": run_bare, "c": run_c,
     "engine": run_engine}[arguments.role](
        arguments
    )
