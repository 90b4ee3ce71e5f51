"""What every part of `make bench-relay` (bench/relay_bench.py) shares: the round sizes, the CPUs, pinning,
the process's CPU time, and which checkouts' data planes run (set once from the command line)."""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
# --code-root: whose data plane the rounds measure; --compare-root: another checkout's, run as two more variants
# in the same rounds ("": none). bench/relay_bench.py sets both from its command line.
RUN = argparse.Namespace(code_root=str(ROOT), compare_root="")


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
