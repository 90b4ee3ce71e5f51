"""services.common.wait_for: what a container waits for before it becomes its process (podman-compose
does not enforce depends_on conditions). Real RabbitMQ, real SQLite databases, real subprocesses."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services import platform
from services.common import migrations
from services.common.wait_for import broker_answers, databases_migrated, wait

REPO = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the probe is closed


def wait_for(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.common.wait_for", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_wait_returns_once_a_check_passes_and_times_out_with_what_was_missing() -> None:
    attempts: list[int] = []

    def third_time_lucky() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError("not yet")

    wait({"thing": third_time_lucky}, timeout=5, interval=0.01)
    assert len(attempts) == 3

    def never() -> None:
        raise ConnectionRefusedError("refused")

    with pytest.raises(TimeoutError, match=r"other: not ready after 0 s \(refused\)"):
        wait({"other": never}, timeout=0.2, interval=0.05)


def test_migrated_means_every_service_at_its_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/{{service}}.db"
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(LookupError, match="accounts's database is at no revision"):
        databases_migrated()
    for service in platform.SERVICE_NAMES:
        migrations.upgrade(service, url.replace("{service}", service))
    databases_migrated()


@pytest.mark.integration
def test_the_command_runs_once_the_broker_answers(rabbit_config: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URI", rabbit_config["AMQP_URI"])
    broker_answers()
    env = {"PATH": "/usr/bin:/bin", "AMQP_URI": rabbit_config["AMQP_URI"]}
    result = wait_for("--broker", "--", sys.executable, "-c", "print('became the command')", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "became the command"


def test_a_broker_that_never_answers_is_a_clear_failure_and_the_command_never_runs() -> None:
    env = {"PATH": "/usr/bin:/bin", "AMQP_URI": f"amqp://guest:guest@127.0.0.1:{closed_port()}/"}
    result = wait_for("--broker", "--timeout", "1", "--", sys.executable, "-c", "print('ran')", env=env)
    assert result.returncode == 1
    assert "wait_for: RabbitMQ: not ready after 1 s" in result.stderr
    assert "ran" not in result.stdout


def test_a_command_is_required() -> None:
    result = wait_for("--broker", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "no command after --" in result.stderr
