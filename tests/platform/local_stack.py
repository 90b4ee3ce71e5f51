"""The whole platform as `make run` starts it (deploy/run_local.py), on a block of free ports: for the tests
that drive it end to end (tests/platform/test_make_run.py, tests/web/test_patrol_platform.py)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
STACK_PORTS = 15  # the block stack_env numbers the platform's ports in (base + 0 … base + 14)


def port_is_free(port: int) -> bool:
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            tcp.bind(("127.0.0.1", port))
            udp.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(size: int) -> int:
    """The first of `size` consecutive free ports (the platform numbers its metrics ports from a base)."""
    for _ in range(200):
        base = random.randint(20000, 60000)
        if all(port_is_free(base + offset) for offset in range(size)):
            return base
    raise RuntimeError("no block of free ports")


def stack_env(base: int, amqp_uri: str, database_dir: Path, recordings: Path, **extra: str) -> dict[str, str]:
    """The environment of a platform on base … base + STACK_PORTS - 1, SQLite databases in `database_dir`."""
    return {
        **os.environ,
        "AMQP_URI": amqp_uri,
        "DATABASE_URL": f"sqlite:///{database_dir}/{{service}}.db",
        "METRICS_PORT_BASE": str(base),  # the five services: base … base + 4
        "RELAY_METRICS_PORT": str(base + 5),
        "GATEWAY_BIND": f"127.0.0.1:{base + 6}",
        "RELAY_MEDIA_PORT": str(base + 7),  # and +8 for RTCP
        "RELAY_CONTROL_PORT": str(base + 9),
        "RELAY_INGEST_METRICS_PORT": str(base + 10),
        "RELAY_INGEST_CONTROL_PORT": str(base + 11),
        "RELAY_RTMP_PORT": str(base + 12),
        "RECORDER_METRICS_PORT": str(base + 13),
        "RECORDER_CONTROL_PORT": str(base + 14),
        "RECORDINGS_ROOT": str(recordings),
        "RELAY_ALLOW_DEV_SECRET": "1",
        "GATEWAY_WORKERS": "1",
        **extra,
    }


def start_platform(env: dict[str, str]) -> subprocess.Popen:
    """deploy/run_local.py in its own process group (Ctrl-C goes to it alone); stdout and stderr as text."""
    return subprocess.Popen(
        [sys.executable, "deploy/run_local.py"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def wait_until_ready(url: str, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "make run's platform exited during start-up"
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} was not ready within {seconds} s")
