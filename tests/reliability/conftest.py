"""Reliability and security tests: faults on the tests' own broker and database, hostile clients.

Not part of `make test`: every test here is marked `reliability` and skipped unless the run selects
that marker (`pytest -m reliability`, as `make test-reliability` does) or LIANXIAO_RELIABILITY=1.
At the end the run prints one table of figures (see figures.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .figures import HOSTILE_ROWS, ROWS, Row, render, render_hostile
from .infra import PostgresCluster, RabbitNode, rabbit_home

HERE = Path(__file__).resolve().parent
# Hostile input to the relay is tested where the relay lives (`make test-relay`); listed, not duplicated.
REFERENCED = [
    Row("relay fuzz (RTP/RTCP/H.264/hello): tests/relay/test_fuzz.py", notes="run by make test-relay"),
    Row("relay forged/expired join tokens, unknown SSRCs, flood budget: tests/relay/test_dataplane_process.py",
        notes="run by make test-relay"),
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: fault, hostile-input and security tests (make test-reliability)")


def selected(config: pytest.Config) -> bool:
    return "reliability" in (config.getoption("markexpr") or "") or os.environ.get("LIANXIAO_RELIABILITY") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="reliability tests: run `make test-reliability` (or -m reliability)")
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.reliability)
            if not selected(config):
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ROWS:
        terminalreporter.section("lianxiao reliability figures")
        for line in render([*ROWS, *REFERENCED]):
            terminalreporter.write_line(line)
    if HOSTILE_ROWS:
        terminalreporter.section("hostile tenant (issue 12)")
        for line in render_hostile(HOSTILE_ROWS):
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """Our own PostgreSQL cluster: tests stop and start it; the machine's :5432 is never touched."""
    root = Path(tempfile.mkdtemp(prefix="lxrel-pg-"))  # not under pytest's 0700 tree: postgres must enter it
    root.chmod(0o755)
    cluster: PostgresCluster | None = None
    try:
        cluster = PostgresCluster(root / "cluster")
        cluster.start()
        yield cluster
    finally:
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def broker() -> Iterator[RabbitNode]:
    """Our own RabbitMQ node on free ports: tests restart it; the machine's :5672 is never touched."""
    root = Path(tempfile.mkdtemp(prefix="lxrel-rabbit-"))
    node = RabbitNode(root / "node", rabbit_home(root), uuid.uuid4().hex[:8])
    try:
        node.start()
        yield node
    finally:
        node.stop()
        node.kill()
        shutil.rmtree(root, ignore_errors=True)
