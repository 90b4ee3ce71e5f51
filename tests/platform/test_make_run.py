"""`make run` as a new user meets it: the whole platform up, the demo bureau readable, Ctrl-C stops it all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.platform.local_stack import REPO, STACK_PORTS, free_port_block, stack_env, start_platform, wait_until_ready


def descendants(root: int) -> set[int]:
    """Every process started (directly or not) by `root`, read from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's bookkeeping is left


@pytest.mark.integration
def test_make_run_serves_the_demo_bureau_and_stops_cleanly_on_ctrl_c(rabbit_config, tmp_path):
    base = free_port_block(STACK_PORTS)
    env = stack_env(base, rabbit_config["AMQP_URI"], tmp_path, tmp_path / "recordings")
    gateway = env["GATEWAY_BIND"]
    platform = start_platform(env)
    try:
        wait_until_ready(f"http://{gateway}/readyz", platform, seconds=60)
        demo = subprocess.run(
            [sys.executable, "-m", "services.accounts.cli", "demo"], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=60, check=True,
        )
        tokens = json.loads(demo.stdout)
        school_id = tokens["schools"]["QS-02"]
        answer = requests.get(
            f"http://{gateway}/v1/schools/{school_id}/teachers",
            headers={"Authorization": f"Bearer {tokens['school_token_QS-02']}"}, timeout=10,
        )
        assert answer.status_code == 200, answer.text
        assert {teacher["staff_number"] for teacher in answer.json()["items"]} == {"T0201", "T0202"}
        for offset in range(6):  # five services and the relay data plane
            metrics = requests.get(f"http://127.0.0.1:{base + offset}/metrics", timeout=5)
            assert metrics.status_code == 200 and "lianxiao_" in metrics.text
        # The ingest beside the data plane: its /metrics, and its nginx-rtmp taking connections.
        wait_until_ready(f"http://127.0.0.1:{base + 10}/metrics", platform, seconds=30)
        ingest_metrics = requests.get(f"http://127.0.0.1:{base + 10}/metrics", timeout=5)
        assert ingest_metrics.status_code == 200, ingest_metrics.text
        assert "lianxiao_ingest_rtmp_server_up 1.0" in ingest_metrics.text
        with socket.create_connection(("127.0.0.1", base + 12), timeout=5):
            pass
        # The recorder beside it: its /metrics (the disk guard on the recordings' root) and its control port.
        wait_until_ready(f"http://127.0.0.1:{base + 13}/metrics", platform, seconds=30)
        assert "lianxiao_recorder_disk_free_bytes" in requests.get(f"http://127.0.0.1:{base + 13}/metrics",
                                                                   timeout=5).text
        assert (tmp_path / "recordings").is_dir()
        with socket.create_connection(("127.0.0.1", base + 14), timeout=5):
            pass
        started = descendants(platform.pid)
        assert len(started) >= 11  # 5 services, data plane, ingest + its nginx, recorder, gunicorn + worker
    finally:
        platform.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            output, _ = platform.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(platform.pid, signal.SIGKILL)
            output, _ = platform.communicate()
            pytest.fail("make run did not stop within 30 s of Ctrl-C")
    assert platform.returncode == 0, output[-3000:]
    assert "lianxiao stopped." in output
    assert "Traceback" not in output, output[-3000:]  # e.g. a channel closed under a reader (dataplane_client.py)
    leftovers = sorted(pid for pid in started if running(pid))
    assert leftovers == [], f"processes left running after Ctrl-C: {leftovers}"
