"""docker-compose.yml and the Dockerfile, checked without Docker (none on this machine): parsed, every
command's module exists, every component is there, mounts point at files of the repository."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import yaml

from .ops_helpers import REPO

DEPLOY = REPO / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def test_every_component_is_in_compose() -> None:
    assert set(SERVICES) == {
        "rabbitmq", "postgres", "migrate", "accounts", "activities", "reporting", "classroom-relay",
        "relay-dataplane", "gateway", "prometheus", "grafana",
    }
    assert "rabbitmq_prometheus" in SERVICES["rabbitmq"]["command"]
    assert "rabbitmq_management" in SERVICES["rabbitmq"]["command"]


def test_every_command_runs_something_that_exists() -> None:
    checked = 0
    for name, service in SERVICES.items():
        command = service.get("command")
        if not isinstance(command, list):
            continue
        if command[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(command[2]) is not None, f"{name}: no module {command[2]}"
            if command[2] == "services.common.runner":
                from services.platform import SERVICE_NAMES

                assert command[3] in SERVICE_NAMES, name
            checked += 1
        elif command[0] == "gunicorn":
            config = command[command.index("-c") + 1]
            assert (REPO / config).exists(), f"{name}: {config}"
            module, _, attribute = command[-1].partition(":")
            assert (REPO / (module.replace(".", "/") + ".py")).exists(), f"{name}: {module}"
            assert attribute == "app"
            checked += 1
    assert checked == 7  # migrate, four services, the data plane, the gateway: nothing skipped


def test_app_containers_are_locked_down_and_depend_on_migrations() -> None:
    for name in ("accounts", "activities", "reporting", "classroom-relay", "gateway"):
        service = SERVICES[name]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert "{service}" in service["environment"]["DATABASE_URL"], name


def test_mounted_files_exist() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"


def test_prometheus_in_compose_scrapes_the_compose_services() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    hosts = {target.split(":")[0] for job in config["scrape_configs"]
             for group in job["static_configs"] for target in group["targets"]}
    assert hosts - {"localhost"} <= set(SERVICES)
    # The data plane publishes metrics on 9105 with --metrics-port; the services on METRICS_PORT 9100.
    ports = {target for job in config["scrape_configs"]
             for group in job["static_configs"] for target in group["targets"]}
    assert "relay-dataplane:9105" in ports and "accounts:9100" in ports


def test_dockerfile_is_non_root_and_built_from_the_lock() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "requirements.lock" in text
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    postgres_init = (DEPLOY / "postgres-init.sql").read_text()
    from services.platform import SERVICE_NAMES

    for service in SERVICE_NAMES:
        assert f"lianxiao_{service};" in postgres_init


def test_compose_file_is_the_one_the_readme_documents() -> None:
    readme = (DEPLOY / "README.md").read_text()
    assert "docker compose -f deploy/docker-compose.yml up --build" in readme
    assert Path(DEPLOY / "docker-compose.yml").exists()
