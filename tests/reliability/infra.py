"""Private infrastructure the fault tests may break: their own RabbitMQ nodes and PostgreSQL cluster.

Nothing here touches the machine's shared broker (:5672) or database (:5432): every node and cluster
lives in a temporary directory, listens on free 127.0.0.1 ports and is stopped (then killed if it
does not stop) by the fixture that started it. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.common.config import REPO_ROOT

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
# rabbitmqctl's own Erlang node listens on 35672-35682 (25672 + 10000 + n): never give those to a node.
CLI_PORTS = range(35672, 35683)


def free_port() -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in CLI_PORTS:
            return port


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = condition()
            if value:
                return value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:g} s")


def run(command: list[str], timeout: float, env: dict[str, str] | None = None, user: str | None = None) -> str:
    """Run a command to completion within `timeout` seconds; its output, or an error with it."""
    if user is not None and os.geteuid() == 0:
        command = ["runuser", "-u", user, "--", *command]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stdout}{result.stderr}")
    return result.stdout


class RabbitNode:
    """One RabbitMQ node of our own: `start()`, `stop()`, `kill()`; cookie shared by `home`."""

    def __init__(self, root: Path, home: Path, tag: str) -> None:
        self.root = root
        self.name = f"lxrel-{tag}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.uri = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        (root / "mnesia").mkdir(parents=True, exist_ok=True)
        (root / "log").mkdir(exist_ok=True)
        (root / "plugins").write_text("[].\n")  # no management/prometheus listeners to collide with
        (root / "rabbitmq.conf").write_text("loopback_users = none\n")
        (root / "rabbitmq-env.conf").write_text("")  # keeps /etc/rabbitmq/rabbitmq-env.conf's NODENAME out
        self.env = {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_PID_FILE": str(root / "rabbit.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "plugins"),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def ctl(self, *args: str, timeout: float = 60) -> str:
        return run([str(RABBIT_BIN / "rabbitmqctl"), "-q", "-n", self.name, *args], timeout, self.env)

    def start(self, timeout: float = 60) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / "rabbit.pid").unlink()
        output = (self.root / "server.out").open("ab")
        self.process = subprocess.Popen(
            [str(RABBIT_BIN / "rabbitmq-server")], env=self.env, stdout=output, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        output.close()
        try:
            self.ctl("wait", "--timeout", str(int(timeout)), str(self.root / "rabbit.pid"), timeout=timeout + 10)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            tail = (self.root / "server.out").read_text(errors="replace")[-3000:]
            self.kill()
            raise RuntimeError(f"RabbitMQ node {self.name} did not start: {error}\n{tail}") from error

    def stop(self, timeout: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.ctl("stop", timeout=timeout)
            self.process.wait(timeout=timeout)
        except (RuntimeError, subprocess.TimeoutExpired):
            self.kill()

    def kill(self) -> None:
        """SIGKILL the node's whole process group (beam, its port programs)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def add_vhost(self, vhost: str) -> str:
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return f"{self.uri}{vhost}"


def rabbit_home(root: Path) -> Path:
    """A HOME with its own Erlang cookie (the nodes and rabbitmqctl of one test share it)."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    cookie = home / ".erlang.cookie"
    cookie.write_text(uuid.uuid4().hex.upper())
    cookie.chmod(0o400)
    return home


class PostgresCluster:
    """A PostgreSQL cluster of our own (initdb + pg_ctl) that tests may stop and start at will."""

    def __init__(self, root: Path) -> None:
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not binaries:
            raise RuntimeError("PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are not installed")
        self.bin = Path(binaries[-1]).parent
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None  # initdb refuses to run as root
        root.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            shutil.chown(root, user=self.user)
        run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
             "--locale=C.UTF-8", "--no-sync"], timeout=60, user=self.user)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 30) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=300"
        run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
             "-t", str(int(timeout)), "-o", options, "start"], timeout=timeout + 10, user=self.user)

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown: sessions are cut, as when the database server goes away."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", str(int(timeout)),
                 "stop"], timeout=timeout + 10, user=self.user)

    def destroy(self) -> None:
        self.stop()
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():  # did not stop: kill it
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


class ServiceProcess:
    """`python -m services.common.runner <service>` as production runs it, with its own log file."""

    def __init__(self, service: str, env: dict[str, str], log_path: Path) -> None:
        self.service = service
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.crashes = 0  # exits nobody asked for (see `revive`)
        self.wanted = False

    def start(self) -> None:
        self.wanted = True
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.common.runner", self.service], cwd=REPO_ROOT, env=self.env,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        self.starts += 1
        marker = f"{self.service} started"  # logged by the runner once every entrypoint is up
        process = self.process

        def started() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{self.service} exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            return self.log_path.read_text(errors="replace").count(marker) >= self.starts

        deadline = time.monotonic() + 30
        while not started():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.service} did not start within 30 s")
            time.sleep(0.1)

    def revive(self) -> bool:
        """What a supervisor (Kubernetes, systemd) does: start the process again if it exited by itself."""
        if not self.wanted or self.process is None or self.process.poll() is None:
            return False
        self.crashes += 1
        self.start()
        return True

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.wanted = False
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        if self.process is not None and self.process.poll() is None:
            self.kill(signal.SIGKILL)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


class RabbitCluster:
    """Three (or `size`) own RabbitMQ nodes sharing one cookie, clustered onto the first node.

    Each node has its own AMQP and distribution ports and its own data directory; `start()` starts
    them concurrently, then joins the others to the first (`stop_app; join_cluster; start_app`).
    """

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        home = rabbit_home(root)
        tag = uuid.uuid4().hex[:6]
        self.nodes = [RabbitNode(root / f"node{index}", home, f"{tag}-{index}") for index in range(size)]

    @property
    def first(self) -> RabbitNode:
        return self.nodes[0]

    def start(self, timeout: float = 90) -> None:
        import eventlet  # the reliability suite runs monkey-patched: start the nodes side by side

        pool = eventlet.GreenPool(len(self.nodes))
        for node in self.nodes:
            pool.spawn(node.start, timeout)
        pool.waitall()
        for node in self.nodes:
            if not node.running():
                raise RuntimeError(f"RabbitMQ node {node.name} is not running")
        for node in self.nodes[1:]:
            node.ctl("stop_app", timeout=60)
            node.ctl("join_cluster", self.first.name, timeout=60)
            node.ctl("start_app", timeout=60)
        members = self.first.ctl("eval", "length(rabbit_nodes:all_running()).", timeout=30).strip()
        if members != str(len(self.nodes)):
            raise RuntimeError(f"cluster has {members} running nodes, wanted {len(self.nodes)}")

    def failover_uri(self, vhost: str, order: list[RabbitNode] | None = None) -> str:
        """kombu's failover form: `amqp://a/vhost;amqp://b/vhost;...` (tried in this order)."""
        return ";".join(f"{node.uri}{vhost}" for node in (order or self.nodes))

    def node(self, name: str) -> RabbitNode:
        return next(node for node in self.nodes if node.name == name)

    def destroy(self) -> None:
        """Stop every node (kill it if it does not stop); safe to call after any failure."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop(timeout=20)
            node.kill()
