"""The real data-plane process for the control plane's integration tests (the harness of tests/relay)."""

from __future__ import annotations

import socket
import time

from tests.relay.relay_harness import DataPlane, start_dataplane


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(control_port: int = 0, secret_file: str | None = None, *extra: str) -> DataPlane:
    """A data plane on 127.0.0.1; a fixed control port and secret file let a test restart it where the control
    plane looks, with the secret it reads."""
    arguments = ("--control-port", str(control_port), *extra) if control_port else extra
    return start_dataplane(*arguments, secret_file=secret_file)


def wait_for(predicate, timeout: float, interval: float = 0.1):
    """Poll until `predicate()` returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            found = predicate()
        except (OSError, KeyError, AssertionError) as error:
            last_error, found = error, None
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last error: {last_error!r})")
