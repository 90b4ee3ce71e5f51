"""Slow clients cannot stall the gateway (issue 12, item 3): nginx in front reads whole requests.

Sixteen connections send a request header a byte at a time, as the issue's slowloris did, against the
gateway as `make run` serves it (nginx → gunicorn, one worker of 8 threads, so 16 would hold them all);
meanwhile another client's requests must stay fast, and nginx must drop the slow ones at its header timeout.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from services.common.config import DEFAULT_AMQP_URI

from .gateway_support import ProxiedGateway

SLOW_CONNECTIONS = 16
ATTACK_SECONDS = 8.0


def slow_client(port: int, stop: threading.Event, closed_after: list[float]) -> None:
    """Send a request header one byte a second until the server gives up on us (or the test ends)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
        payload = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
        for byte in payload:
            if stop.is_set():
                return
            try:
                connection.sendall(bytes([byte]))
                connection.settimeout(1.0)
                if connection.recv(1024) == b"":
                    break  # closed by the server
            except TimeoutError:
                continue
            except OSError:
                break
    closed_after.append(time.monotonic() - started)


def run_attack(port: int, url: str) -> dict[str, Any]:
    stop = threading.Event()
    closed_after: list[float] = []
    attackers = [threading.Thread(target=slow_client, args=(port, stop, closed_after), daemon=True)
                 for _ in range(SLOW_CONNECTIONS)]
    for attacker in attackers:
        attacker.start()
    time.sleep(1.0)  # every slow connection is open and mid-header
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + ATTACK_SECONDS
    while time.monotonic() < deadline and len(latencies) + failures < 200:  # bounded in time and count
        started = time.perf_counter()
        try:
            ok = requests.get(f"{url}/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            ok = False
        if ok:
            latencies.append(time.perf_counter() - started)
        else:
            failures += 1
        time.sleep(0.05)
    stop.set()
    for attacker in attackers:
        attacker.join(timeout=5)
    latencies.sort()
    return {
        "requests": len(latencies) + failures, "failures": failures,
        "p50": statistics.median(latencies) if latencies else None,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None,
        "slow_closed": len(closed_after), "slow_closed_after_max": max(closed_after, default=None),
    }


@pytest.fixture
def proxied_gateway(tmp_path: Path) -> Any:
    gateway = ProxiedGateway(DEFAULT_AMQP_URI, tmp_path, GATEWAY_WORKERS="1", GATEWAY_THREADS="8")
    yield gateway
    gateway.stop()


def test_other_clients_stay_fast_during_a_slowloris(proxied_gateway: ProxiedGateway) -> None:
    figures = run_attack(proxied_gateway.port, proxied_gateway.url)
    assert figures["failures"] == 0, figures
    assert figures["requests"] >= 20, figures
    assert figures["p99"] < 1.0, figures
    # nginx's client_header_timeout (5 s) closed every slow connection.
    assert figures["slow_closed"] == SLOW_CONNECTIONS, figures
    assert figures["slow_closed_after_max"] < 7.0, figures
