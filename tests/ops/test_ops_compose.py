"""docker-compose.yml and the Dockerfiles, checked without a container engine: parsed, every command's
module exists, every component is there, mounts point at files of the repository. `make test-containers`
(tests/containers) builds the images and runs the stack."""

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
GRAFANA: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.grafana.yml").read_text())["services"]


def test_every_component_is_in_compose() -> None:
    assert set(SERVICES) == {
        "rabbitmq", "postgres", "migrate", "accounts", "activities", "reporting", "classroom-relay",
        "relay-dataplane", "relay-ingest", "recorder", "gateway", "nginx", "prometheus", "resources",
    }
    # Infrastructure from Debian's packages, built here; only Grafana needs a registry, in its own profile.
    infra = (DEPLOY / "infra" / "Containerfile").read_text()
    assert "rabbitmq_management rabbitmq_prometheus" in infra
    for name in ("rabbitmq", "postgres", "prometheus"):
        assert SERVICES[name]["build"]["dockerfile"] == "deploy/infra/Containerfile", name
        assert SERVICES[name]["command"][0] == name, name
    # Grafana's image needs a registry: a file of its own (podman-compose 1.0 ignores compose profiles).
    assert all("build" in service for service in SERVICES.values())
    assert set(GRAFANA) == {"grafana"} and GRAFANA["grafana"]["depends_on"] == ["prometheus"]


def unwrapped(command: list[str]) -> list[str]:
    """The command services.common.wait_for runs once its dependencies answer."""
    if command[:3] == ["python", "-m", "services.common.wait_for"]:
        return command[command.index("--") + 1:]
    return command


def test_every_command_runs_something_that_exists() -> None:
    checked = 0
    for name, service in SERVICES.items():
        command = service.get("command")
        if not isinstance(command, list) or service.get("build", {}).get("dockerfile") != "deploy/Dockerfile":
            continue
        command = unwrapped(command)
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
    assert checked == 8  # migrate, five services, the data plane, the gateway: nothing skipped


def test_nginx_fronts_the_gateway() -> None:
    nginx, gateway = SERVICES["nginx"], SERVICES["gateway"]
    assert nginx["network_mode"] == "service:gateway" and nginx["read_only"] is True
    assert gateway["environment"]["GATEWAY_BIND"] == "127.0.0.1:8081"  # reachable only through nginx
    assert (REPO / nginx["build"]["dockerfile"]).exists()
    config = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert "server 127.0.0.1:8081" in config and "listen 8080" in config


def test_app_containers_are_locked_down_and_wait_for_what_they_need() -> None:
    for name, service in SERVICES.items():  # the infrastructure too, as its package's user
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert service.get("user") in (None, "rabbitmq", "postgres", "prometheus"), name
    for name in ("accounts", "activities", "reporting", "classroom-relay", "gateway"):
        service = SERVICES[name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert "{service}" in service["environment"]["DATABASE_URL"], name
        # podman-compose does not enforce the conditions: the process waits itself.
        waits_for = service["command"][3:service["command"].index("--")]
        assert "--broker" in waits_for, name
        assert ("--migrated" in waits_for) == (name != "gateway"), name
    assert "--databases" in SERVICES["migrate"]["command"]
    assert SERVICES["migrate"]["restart"] == "no"


def test_published_ports_listen_on_the_publish_address() -> None:
    for name, service in (SERVICES | GRAFANA).items():
        for port in service.get("ports", []):
            assert port.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:"), f"{name}: {port}"


def test_mounted_files_exist() -> None:
    for name, service in (SERVICES | GRAFANA).items():
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
    # The ingest shares the data plane's network namespace: its /metrics is the data plane's host, port 9466.
    ingest = SERVICES["relay-ingest"]
    assert ingest["network_mode"] == "service:relay-dataplane" and "--metrics-port=9466" in ingest["command"]
    assert "relay-dataplane:9466" in ports
    assert importlib.util.find_spec(ingest["command"][2]) is not None
    assert ingest["build"]["dockerfile"] == "deploy/ingest/Dockerfile"
    assert "libnginx-mod-rtmp" in (DEPLOY / "ingest" / "Dockerfile").read_text()
    # The recorder too (docs/recording.md): the ingest's image (ffmpeg), RTP over loopback, the recordings volume,
    # and the control plane told where it is.
    recorder = SERVICES["recorder"]
    assert recorder["network_mode"] == "service:relay-dataplane" and recorder["image"] == ingest["image"]
    assert recorder["command"][:3] == ["python", "-m", "services.classroom_relay.recorder"]
    assert {"--control-host=0.0.0.0", "--control-port=7090", "--metrics-port=9467"} <= set(recorder["command"])
    environment = recorder["environment"]
    assert environment["RECORDER_MEDIA_HOST"] == "127.0.0.1" and "relay-dataplane:9467" in ports
    assert f"recordings:{environment['RECORDINGS_ROOT']}" in recorder["volumes"]
    assert SERVICES["classroom-relay"]["environment"]["RELAY_RECORDERS"] == "relay-0=relay-dataplane:7090"


def test_dockerfile_is_non_root_and_built_from_the_lock() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "requirements-runtime.lock" in text
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    postgres_init = (DEPLOY / "postgres-init.sql").read_text()
    from services.platform import SERVICE_NAMES

    for service in SERVICE_NAMES:
        assert f"lianxiao_{service};" in postgres_init


def test_compose_file_is_the_one_the_readme_documents() -> None:
    readme = (DEPLOY / "README.md").read_text()
    assert "podman-compose -f deploy/docker-compose.yml" in readme
    assert Path(DEPLOY / "docker-compose.yml").exists()


def test_kubernetes_runs_the_commands_compose_runs() -> None:
    """One image: every Kubernetes container runs what the compose stack (and tests/containers) runs."""
    compose_commands = {tuple(unwrapped(service["command"])) for service in SERVICES.values()
                        if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"}
    checked = 0
    for path in sorted((REPO / "k8s" / "base").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            pod = ((document or {}).get("spec", {}).get("template") or {}).get("spec", {})
            for container in pod.get("containers", []):
                if container.get("image") != "lianxiao":
                    continue
                command = tuple(container["command"])
                if command[2:3] == ("services.classroom_relay.dataplane",):
                    assert any(other[:3] == command[:3] for other in compose_commands), path.name
                else:
                    assert command in compose_commands, f"{path.name}: {command}"
                checked += 1
    assert checked == 8  # migrations, five services (resources too), the data plane, the gateway
