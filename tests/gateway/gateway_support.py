"""Helpers of the gateway tests: the invented city, a gunicorn gateway subprocess, auth headers.

The invented city: bureau 青山 (districts 东/西, schools 一中 and 柳湾 in the east, 西岭 in the west)
and a second bureau 白河 with one school, each school with one teacher whose name appears nowhere else.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from nameko.runners import ServiceRunner
from sqlalchemy.orm import Session

from services.accounts import directory, tokens
from services.common.db import make_engine
from services.common.scope import Scope

REPO_ROOT = Path(__file__).resolve().parents[2]
GUNICORN = REPO_ROOT / ".venv" / "bin" / "gunicorn"
GUNICORN_CONF = REPO_ROOT / "services" / "gateway" / "gunicorn.conf.py"

# One invented teacher per school; a response that names one it should not see is a leak.
TEACHER_NAMES = {"east_one": "林晓雨", "east_two": "周望舒", "west": "陈可馨", "elsewhere": "王一诺"}


@dataclass
class City:
    bureau_id: int
    other_bureau_id: int
    districts: dict[str, int]
    schools: dict[str, int]
    teachers: dict[str, int]
    tokens: dict[str, str] = field(default_factory=dict)
    token_ids: dict[str, int] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build_city(accounts_url: str) -> City:
    """The invented bureaus, written straight into accounts' database (as the operator's CLI would)."""
    engine = make_engine(accounts_url)
    tag = uuid.uuid4().hex[:6]
    with Session(engine, expire_on_commit=False) as session:
        bureau = directory.create_bureau(session, {"code": f"qs{tag}", "name": f"青山市教育局{tag}"})
        other = directory.create_bureau(session, {"code": f"bh{tag}", "name": f"白河县教育局{tag}"})
        admin, other_admin = Scope.bureau_admin(bureau["id"]), Scope.bureau_admin(other["id"])
        east = directory.create_district(session, admin, {"bureau_id": bureau["id"], "name": "东片区"})
        west = directory.create_district(session, admin, {"bureau_id": bureau["id"], "name": "西片区"})

        def school(scope: Scope, bureau_id: int, district: int | None, code: str, name: str) -> dict[str, Any]:
            return directory.create_school(session, scope, {
                "bureau_id": bureau_id, "district_id": district, "code": f"{code}-{tag}", "name": name,
            })

        schools = {
            "east_one": school(admin, bureau["id"], east["id"], "QS1", "青山一中"),
            "east_two": school(admin, bureau["id"], east["id"], "QS2", "柳湾小学"),
            "west": school(admin, bureau["id"], west["id"], "QS3", "西岭中学"),
            "elsewhere": school(other_admin, other["id"], None, "BH1", "白河实验学校"),
        }
        teachers = {}
        for key, school_row in schools.items():
            scope = other_admin if key == "elsewhere" else admin
            teachers[key] = directory.create_teacher(session, scope, {
                "school_id": school_row["id"], "staff_number": f"T{key}", "name": TEACHER_NAMES[key],
                "subject": "语文", "grade": "七年级",
            })["id"]
        city = City(
            bureau_id=bureau["id"], other_bureau_id=other["id"],
            districts={"east": east["id"], "west": west["id"]},
            schools={key: row["id"] for key, row in schools.items()},
            teachers=teachers,
        )

        def issue(name: str, issuer: Scope, kind: str, ident: int, access: str, now: datetime | None = None) -> None:
            data = {"scope_kind": kind, "scope_id": ident, "label": name, "access": access}
            if now is not None:
                data["ttl_days"] = 1  # issued "in the past" with the shortest life: expired today
            issued = tokens.issue_token(session, issuer, data, now=now)
            city.tokens[name], city.token_ids[name] = issued["token"], issued["id"]

        issue("bureau_write", admin, "bureau", bureau["id"], "write")
        issue("bureau_read", admin, "bureau", bureau["id"], "read")
        issue("east_read", admin, "district", east["id"], "read")
        issue("school_write", admin, "school", city.schools["east_one"], "write")
        issue("school_read", admin, "school", city.schools["east_one"], "read")
        issue("other_bureau_write", other_admin, "bureau", other["id"], "write")
        issue("expired", admin, "school", city.schools["east_one"], "read", now=datetime.now(UTC) - timedelta(days=3))
        issue("revoked", admin, "school", city.schools["east_one"], "read")
        tokens.revoke_token(session, admin, city.token_ids["revoked"])
        for spare in ("rate_limited", "spare_one", "spare_two"):
            issue(spare, admin, "school", city.schools["east_one"], "write")
        session.commit()
    engine.dispose()
    return city


def healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def started_in_time(process: subprocess.Popen, ready: Any, timeout: float, what: str, log_path: Path) -> bool:
    """Wait until `ready()`; False after `timeout`, RuntimeError (with its log) if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {log_path.read_text(errors='replace')[-3000:]}")
        if ready():
            return True
        time.sleep(0.1)
    return False


class Gunicorn:
    """The gateway as it runs in production: a gunicorn subprocess on a free 127.0.0.1 port."""

    def __init__(self, amqp_uri: str, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environment = {**os.environ, "AMQP_URI": amqp_uri, "GATEWAY_BIND": f"127.0.0.1:{self.port}", **env}
        environment.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn.conf.py makes its own
        self.log = log_path.open("wb")
        self.process = subprocess.Popen(
            [str(GUNICORN), "-c", str(GUNICORN_CONF), "services.gateway.wsgi:app"],
            cwd=REPO_ROOT, env=environment, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        bind = environment["GATEWAY_BIND"]
        self._wait_until_up(timeout=20, unix_socket=bind[5:] if bind.startswith("unix:") else None)

    def _wait_until_up(self, timeout: float, unix_socket: str | None = None) -> None:
        # Behind nginx only the socket can be checked here; ProxiedGateway asks /healthz through nginx.
        ready = (lambda: Path(unix_socket).exists()) if unix_socket else (lambda: healthy(self.url))
        if not started_in_time(self.process, ready, timeout, "gunicorn", self.log_path):
            self.stop()
            raise RuntimeError(f"gunicorn did not answer within {timeout} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.log.close()


class ProxiedGateway:
    """The gateway as `make run` serves it: gunicorn on a Unix socket behind nginx on a free port."""

    def __init__(self, amqp_uri: str, workdir: Path, **env: str) -> None:
        from services.gateway.local_proxy import nginx_command, write_config

        run_dir = Path(tempfile.mkdtemp(prefix="lxt-nginx-"))  # short: a socket path has at most 107 bytes
        socket_path = run_dir / "gateway.sock"
        self.run_dir = run_dir
        self.gunicorn = Gunicorn(amqp_uri, workdir / "gateway.log", GATEWAY_BIND=f"unix:{socket_path}", **env)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "nginx.log").open("wb")
        config = write_config(run_dir, f"127.0.0.1:{self.port}", socket_path)
        self.process = subprocess.Popen(nginx_command(config), stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        if not started_in_time(self.process, lambda: healthy(self.url), 20, "nginx", workdir / "nginx.log"):
            self.stop()
            raise RuntimeError("nginx + gunicorn did not answer within 20 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.log.close()
        self.gunicorn.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def running(config: dict[str, Any], service: type) -> Iterator[ServiceRunner]:
    """One nameko service (its /metrics on an ephemeral port) for the length of a fixture."""
    runner = ServiceRunner({**config, "METRICS_PORT": 0})
    runner.add_service(service)
    runner.start()
    try:
        yield runner
    finally:
        runner.kill()
