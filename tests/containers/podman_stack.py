"""The compose stack under podman for one test run: the same images, commands and lock-down settings as
deploy/docker-compose.yml, on the host's network bound to 127.0.0.1 with free ports, so runs never meet
each other or the host's own RabbitMQ and PostgreSQL. Every container and volume carries the run's label
and is removed by `remove()`."""

from __future__ import annotations

import random
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())["services"]
APP_SERVICES = ("migrate", "accounts", "activities", "reporting", "classroom-relay", "resources", "relay-dataplane",
                "recorder", "gateway")
NAMEKO_SERVICES = ("accounts", "activities", "reporting", "classroom-relay", "resources")
# Processes beside the data plane, from the ingest image (the application image plus ffmpeg).
INGEST_IMAGE_SERVICES = ("recorder",)
# The recordings volume: written by the recorder, read (and deleted on retention) by resources.
RECORDINGS_ROOT: str = COMPOSE["recorder"]["environment"]["RECORDINGS_ROOT"]
LOCALHOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCALHOST, 0))
        return probe.getsockname()[1]


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode:
        raise RuntimeError(f"podman {' '.join(args[:3])}…: exit {result.returncode}: {result.stderr[-2000:]}")
    return result


def lock_down(service: dict[str, Any]) -> list[str]:
    """podman options for a compose service's user, read_only, cap_drop, tmpfs and security_opt."""
    options = [f"--user={service['user']}"] if service.get("user") else []
    options += ["--read-only"] if service.get("read_only") else []
    options += [f"--cap-drop={capability}" for capability in service.get("cap_drop", [])]
    options += [f"--tmpfs={path}" for path in service.get("tmpfs", [])]
    options += [f"--security-opt={option}" for option in service.get("security_opt", [])]
    return options


@dataclass
class Stack:
    run: str
    app_image: str
    infra_image: str
    nginx_image: str
    ingest_image: str
    ports: dict[str, int] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    containers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("amqp", "rabbitmq_management", "rabbitmq_prometheus", "epmd", "erlang_dist", "postgres",
                     "gateway", "gunicorn", "media", "control", "dataplane_metrics", "prometheus", "recorder_control",
                     "recorder_metrics", *NAMEKO_SERVICES):
            self.ports[name] = free_port()
        # RTP from the data plane to the recorder's ffmpeg (bound only while recording): a block of its own
        # per run, away from the recorder's default 42000-42999 that other recorders on this machine use.
        self.recorder_media_ports = (base := 43000 + 64 * random.randrange(200), base + 63)
        for name in ("rabbitmq", "postgres", "join", "control", "scope", "playback"):
            self.secrets[name] = secrets.token_hex(16)

    @property
    def label(self) -> str:
        return f"lianxiao.test-run={self.run}"

    def name(self, service: str) -> str:
        return f"lianxiao-test-{self.run}-{service}"

    @property
    def gateway(self) -> str:
        return f"http://{LOCALHOST}:{self.ports['gateway']}"

    def app_environment(self) -> dict[str, str]:
        return {
            "AMQP_URI": f"amqp://lianxiao:{self.secrets['rabbitmq']}@{LOCALHOST}:{self.ports['amqp']}/",
            "DATABASE_URL": f"postgresql://lianxiao:{self.secrets['postgres']}@{LOCALHOST}:{self.ports['postgres']}"
                            "/lianxiao_{service}",
            "METRICS_ADDR": LOCALHOST,
            "LIANXIAO_SCOPE_SECRET": self.secrets["scope"],
            "WAIT_FOR_TIMEOUT": "120",
        }

    def _run(self, service: str, image: str, options: Iterable[str], env: dict[str, str], command: list[str],
             detach: bool = True) -> subprocess.CompletedProcess:
        args = ["run", "--network=host", f"--label={self.label}", *options]
        args += ["-d", f"--name={self.name(service)}"] if detach else ["--rm"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        if detach:
            self.containers.append(self.name(service))
        return podman(*args, image, *command, timeout=120)

    def start_infrastructure(self) -> None:
        """RabbitMQ and PostgreSQL from deploy/infra (Debian's packages), locked down as compose has them."""
        for service, data in (("rabbitmq", "/var/lib/rabbitmq"), ("postgres", "/var/lib/postgresql/data")):
            podman("volume", "create", f"--label={self.label}", self.name(service))
            options = [*lock_down(COMPOSE[service]), f"--volume={self.name(service)}:{data}"]
            if service == "rabbitmq":
                env = {"LISTEN_ADDRESS": LOCALHOST, "RABBITMQ_NODE_PORT": str(self.ports["amqp"]),
                       "RABBITMQ_MANAGEMENT_PORT": str(self.ports["rabbitmq_management"]),
                       "RABBITMQ_PROMETHEUS_PORT": str(self.ports["rabbitmq_prometheus"]),
                       "ERL_EPMD_PORT": str(self.ports["epmd"]), "RABBITMQ_DIST_PORT": str(self.ports["erlang_dist"]),
                       "RABBITMQ_NODENAME": f"lianxiao-test-{self.run}@localhost",
                       "RABBITMQ_DEFAULT_USER": "lianxiao", "RABBITMQ_DEFAULT_PASS": self.secrets["rabbitmq"]}
            else:
                env = {"LISTEN_ADDRESS": LOCALHOST, "PGPORT": str(self.ports["postgres"]),
                       "POSTGRES_USER": "lianxiao", "POSTGRES_PASSWORD": self.secrets["postgres"]}
            self._run(service, self.infra_image, options, env, list(COMPOSE[service]["command"]))

    def start_prometheus(self, config_dir: Path) -> None:
        """Prometheus from the infrastructure image with the compose command, scraping `config_dir`'s targets."""
        podman("volume", "create", f"--label={self.label}", self.name("prometheus"))
        options = [*lock_down(COMPOSE["prometheus"]), f"--volume={config_dir}:/etc/prometheus:ro",
                   f"--volume={self.name('prometheus')}:/prometheus"]
        env = {"LISTEN_ADDRESS": LOCALHOST, "PROMETHEUS_PORT": str(self.ports["prometheus"])}
        self._run("prometheus", self.infra_image, options, env, list(COMPOSE["prometheus"]["command"]))

    def scrape_targets(self) -> dict[str, str]:
        """Prometheus jobs for this run's processes (the compose file's jobs name compose hosts instead)."""
        targets = {service: f"{LOCALHOST}:{self.ports[service]}" for service in NAMEKO_SERVICES}
        targets["gateway"] = f"{LOCALHOST}:{self.ports['gunicorn']}"
        targets["relay-dataplane"] = f"{LOCALHOST}:{self.ports['dataplane_metrics']}"
        targets["recorder"] = f"{LOCALHOST}:{self.ports['recorder_metrics']}"
        return targets

    def app_command(self, service: str) -> list[str]:
        """The compose command, with the data plane's (the recorder's) addresses and ports those of this run."""
        command = list(COMPOSE[service]["command"])
        if service == "relay-dataplane":
            values = {"media-host": LOCALHOST, "control-host": LOCALHOST, "metrics-host": LOCALHOST,
                      "media-port": self.ports["media"], "control-port": self.ports["control"],
                      "metrics-port": self.ports["dataplane_metrics"]}
        elif service == "recorder":
            values = {"control-host": LOCALHOST, "metrics-host": LOCALHOST,
                      "control-port": self.ports["recorder_control"], "metrics-port": self.ports["recorder_metrics"]}
        else:
            return command
        rewritten = [re.sub(r"^--([a-z-]+)=.*$", lambda match: f"--{match[1]}={values[match[1]]}", part)
                     if part.startswith("--") else part for part in command]
        assert all(f"--{key}={value}" in rewritten for key, value in values.items()), rewritten
        return rewritten

    def start_applications(self) -> None:
        base = self.app_environment()
        podman("volume", "create", f"--label={self.label}", self.name("recordings"))
        recordings = f"--volume={self.name('recordings')}:{RECORDINGS_ROOT}"
        for service in APP_SERVICES:
            env = dict(base)
            options = lock_down(COMPOSE[service])
            if service in NAMEKO_SERVICES:
                env["METRICS_PORT"] = str(self.ports[service])
            if service == "classroom-relay":
                env |= {"RELAY_DATAPLANES": f"relay-0={LOCALHOST}:{self.ports['control']}",
                        "RELAY_DATAPLANE_PUBLIC_HOSTS": f"relay-0={LOCALHOST}",
                        "RELAY_JOIN_SECRETS": self.secrets["join"], "RELAY_CONTROL_SECRET": self.secrets["control"],
                        "RELAY_RECORDERS": f"relay-0={LOCALHOST}:{self.ports['recorder_control']}"}
            if service == "resources":
                env |= {"PLAYBACK_SECRET": self.secrets["playback"], "RECORDINGS_ROOT": RECORDINGS_ROOT}
                options.append(recordings)
            if service == "relay-dataplane":
                env = {"RELAY_CONTROL_SECRET": self.secrets["control"]}
            if service == "recorder":
                low, high = self.recorder_media_ports
                env = {**COMPOSE["recorder"]["environment"], "RELAY_CONTROL_SECRET": self.secrets["control"],
                       "RECORDER_MEDIA_PORTS": f"{low}-{high}"}
                options.append(recordings)
            if service == "gateway":
                env |= {"GATEWAY_BIND": f"{LOCALHOST}:{self.ports['gunicorn']}",
                        "PROMETHEUS_MULTIPROC_DIR": COMPOSE["gateway"]["environment"]["PROMETHEUS_MULTIPROC_DIR"]}
            image = self.ingest_image if service in INGEST_IMAGE_SERVICES else self.app_image
            self._run(service, image, options, env, self.app_command(service))

    def start_nginx(self, config_dir: Path) -> None:
        """nginx in front of gunicorn as compose has it, its nginx.conf with this run's two ports (after
        start_applications, which creates the recordings volume)."""
        config = (REPO / "deploy" / "nginx" / "nginx.conf").read_text()
        ported = config.replace("server 127.0.0.1:8081;", f"server {LOCALHOST}:{self.ports['gunicorn']};")
        ported = ported.replace("listen 8080;", f"listen {LOCALHOST}:{self.ports['gateway']};")
        assert ported.count(str(self.ports["gunicorn"])) == 1 and ported.count(str(self.ports["gateway"])) == 1
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "nginx.conf").write_text(ported)
        (config_dir / "nginx.conf").chmod(0o644)
        options = [*lock_down(COMPOSE["nginx"]), f"--volume={config_dir / 'nginx.conf'}:/etc/nginx/nginx.conf:ro"]
        # /media/ serves the recordings volume read-only, its URLs signed with the resources service's secret.
        options += [f"--volume={self.name('recordings')}:{volume.partition(':')[2]}"
                    for volume in COMPOSE["nginx"].get("volumes", []) if volume.startswith("recordings:")]
        env = {**COMPOSE["nginx"].get("environment", {}), "PLAYBACK_SECRET": self.secrets["playback"]}
        self._run("nginx", self.nginx_image, options, env, [])

    def run_once(self, command: list[str]) -> str:
        """A one-off command in the application image (like `podman-compose run`), its stdout."""
        return self._run("once", self.app_image, lock_down(COMPOSE["migrate"]), self.app_environment(), command,
                         detach=False).stdout

    def exit_code(self, service: str, timeout: float) -> int:
        return int(podman("wait", self.name(service), timeout=timeout).stdout.strip())

    def logs(self, service: str) -> str:
        result = podman("logs", self.name(service), check=False)
        return result.stdout + result.stderr

    def stop(self, service: str, grace_seconds: int) -> tuple[float, int]:
        """`podman stop` (SIGTERM, then SIGKILL after the grace period): seconds taken and the exit code."""
        started = time.monotonic()
        podman("stop", f"--time={grace_seconds}", self.name(service), timeout=grace_seconds + 30)
        seconds = time.monotonic() - started
        return seconds, int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name(service)).stdout)

    def state(self, service: str) -> str:
        return podman("inspect", "--format", "{{.State.Status}}", self.name(service)).stdout.strip()

    def user(self, service: str) -> str:
        return podman("exec", self.name(service), "id", "-u").stdout.strip()

    def remove(self) -> list[str]:
        """Every container and volume of the run; returns what is still there afterwards (nothing)."""
        listed = podman("ps", "-a", "--filter", f"label={self.label}", "--format", "{{.Names}}", check=False)
        names = listed.stdout.split()
        if names:
            podman("rm", "--force", "--time=5", *names, timeout=120, check=False)
        volumes = podman("volume", "ls", "--filter", f"label={self.label}", "--format", "{{.Name}}", check=False)
        if volumes.stdout.split():
            podman("volume", "rm", "--force", *volumes.stdout.split(), check=False)
        left = podman("ps", "-a", "--filter", f"label={self.label}", "--format", "{{.Names}}", check=False).stdout
        left += podman("volume", "ls", "--filter", f"label={self.label}", "--format", "{{.Name}}", check=False).stdout
        return left.split()
