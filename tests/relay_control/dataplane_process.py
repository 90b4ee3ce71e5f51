"""Starting and stopping the real data-plane process for the control plane's integration tests."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from services.classroom_relay.dataplane.control import ControlClient

REPO_ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(rb"relay-dataplane ready media=([\d.]+):(\d+) rtcp=(\d+) control=(\d+)")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class DataPlaneProcess:
    process: subprocess.Popen
    media_port: int
    control_port: int

    def stats(self) -> dict:
        with ControlClient(port=self.control_port, timeout=3) as client:
            reply = client.call("get_stats")
        assert reply["ok"], reply
        return reply["stats"]

    def stop(self) -> str:
        """Terminate (then kill) and return what it wrote to stderr."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        assert self.process.stderr is not None
        return self.process.stderr.read().decode(errors="replace")


def start(control_port: int = 0, timeout: float = 15.0) -> DataPlaneProcess:
    process = subprocess.Popen(
        [sys.executable, "-m", "services.classroom_relay.dataplane", "--media-host", "127.0.0.1",
         "--media-port", "0", "--control-port", str(control_port), "--metrics-port", str(free_port())],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        match = READY.search(line)
        if match:
            return DataPlaneProcess(process, int(match.group(2)), int(match.group(4)))
        if process.poll() is not None:
            break
    process.kill()
    process.wait(timeout=5)
    raise RuntimeError(f"the data plane did not start: {process.stderr.read()!r}")


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
