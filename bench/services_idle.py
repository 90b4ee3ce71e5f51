"""`make bench-services`: each nameko service's start-up time and idle resident memory (budget ≤ 150 MB).

Starts every service as `make run` does (its own process, SQLite databases in a temporary folder, its own
RabbitMQ vhost), times start → first `health` RPC answered, then reads VmRSS/VmHWM after a short idle.
Runs `--rounds` times and prints medians.
"""

# ruff: noqa: I001  (services must be imported before nameko: it silences eventlet's notice)
from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import services  # noqa: E402, F401

from nameko.exceptions import UnknownService  # noqa: E402
from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402

from services.common.migrations import upgrade  # noqa: E402
from services.platform import SERVICE_NAMES  # noqa: E402

MANAGEMENT = "http://127.0.0.1:15672/api"
AUTH = ("guest", "guest")


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(service: str, env: dict[str, str], amqp_uri: str, idle_seconds: float) -> tuple[float, float, float]:
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "services.common.runner", service], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=30) as rpc:
            deadline = started + 60
            while True:  # the service's queue exists only once it has started
                try:
                    getattr(rpc, service).health()
                    break
                except UnknownService:
                    if time.perf_counter() > deadline:
                        raise
                    time.sleep(0.02)
        ready = time.perf_counter() - started
        time.sleep(idle_seconds)
        return ready, status_kib(process.pid, "VmRSS") / 1024, status_kib(process.pid, "VmHWM") / 1024
    finally:
        process.terminate()
        process.wait(timeout=20)


def main() -> None:
    logging.getLogger("amqp").setLevel(logging.ERROR)  # retries until the service exists are expected
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    args = parser.parse_args()
    vhost = f"lianxiao-bench-{uuid.uuid4().hex[:8]}"
    requests.put(f"{MANAGEMENT}/vhosts/{vhost}", auth=AUTH, timeout=10).raise_for_status()
    requests.put(f"{MANAGEMENT}/permissions/{vhost}/guest", auth=AUTH, timeout=10,
                 json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
    amqp_uri = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    try:
        with tempfile.TemporaryDirectory() as folder:
            database_url = f"sqlite:///{folder}/{{service}}.db"
            for service in SERVICE_NAMES:
                upgrade(service, database_url.replace("{service}", service))
            env = {**os.environ, "AMQP_URI": amqp_uri, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING",
                   "RELAY_ALLOW_DEV_SECRET": "1"}
            print(f"{'service':<16} {'start→first RPC (s)':>20} {'idle RSS (MB)':>14} {'peak RSS (MB)':>14}  budget")
            for service in SERVICE_NAMES:
                results = [measure(service, env, amqp_uri, args.idle_seconds) for _ in range(args.rounds)]
                ready, rss, peak = (statistics.median(column) for column in zip(*results, strict=True))
                verdict = "ok" if peak <= 150 else "OVER"
                print(f"{service:<16} {ready:>20.2f} {rss:>14.1f} {peak:>14.1f}  ≤ 150 MB {verdict}")
    finally:
        requests.delete(f"{MANAGEMENT}/vhosts/{vhost}", auth=AUTH, timeout=10)
    print(f"(medians of {args.rounds} rounds; `make bench-services`)")


if __name__ == "__main__":
    main()
