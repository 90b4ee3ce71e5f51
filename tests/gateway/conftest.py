"""Gateway fixtures: the real accounts service on RabbitMQ + PostgreSQL, and the gateway under gunicorn.

One accounts service and one gunicorn gateway serve the whole package (starting them per test would
cost ~2 s each); tests that stop a service build their own with `runner_factory` instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from nameko.runners import ServiceRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.accounts.models import Bureau
from services.accounts.service import AccountsService
from services.activities import roster
from services.activities.service import ActivitiesService
from services.common.db import make_engine

from .gateway_support import REPO_ROOT, City, Gunicorn, build_city, running


@pytest.fixture(scope="package")
def platform_config(vhost_pipeline: Any, request: pytest.FixtureRequest, database_url: str,
                    migrate: Callable[[str], str]) -> Iterator[dict[str, Any]]:
    """nameko config of this package's own vhost and this run's (migrated) databases."""
    migrate("accounts")
    base_uri = request.config.getoption("RABBIT_AMQP_URI").rstrip("/")
    with vhost_pipeline.get() as vhost:
        yield {"AMQP_URI": f"{base_uri}/{vhost}", "DATABASE_URL": database_url, "serializer": "json",
               "max_workers": 10}


@pytest.fixture(scope="package")
def accounts_service(platform_config: dict[str, Any]) -> Iterator[ServiceRunner]:
    runner = ServiceRunner(platform_config)
    runner.add_service(AccountsService)
    runner.start()
    yield runner
    runner.kill()


@pytest.fixture(scope="package")
def city(platform_config: dict[str, Any], accounts_service: ServiceRunner) -> City:
    return build_city(platform_config["DATABASE_URL"].replace("{service}", "accounts"))


@pytest.fixture(scope="package")
def gateway(platform_config: dict[str, Any], city: City, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a gunicorn gateway in front of the package's accounts service."""
    server = Gunicorn(
        platform_config["AMQP_URI"], tmp_path_factory.mktemp("gateway") / "gunicorn.log",
        GATEWAY_RATE_LIMIT_BURST="40", GATEWAY_RATE_LIMIT_PER_SECOND="10",
    )
    yield server.url
    server.stop()
    # Bad input must never reach the "unexpected error" path (a 500); the log would show it.
    log = server.log_path.read_text(errors="replace")
    assert "unexpected error" not in log and "Traceback" not in log, log[-5000:]


@pytest.fixture(scope="package")
def activities_service(platform_config: dict[str, Any], migrate: Callable[[str], str], city: City,
                       ) -> Iterator[ServiceRunner]:
    """The activities service, its roster seeded with the city's teachers (east_two moderates)."""
    engine = make_engine(migrate("activities"))
    with Session(engine) as session, session.begin():
        for key, school_id in city.schools.items():
            district = {"east_one": "east", "east_two": "east", "west": "west"}.get(key)
            roster.apply_teacher_event(session, "teacher.joined", {
                "id": city.teachers[key], "school_id": school_id,
                "district_id": city.districts[district] if district else None,
                "bureau_id": city.other_bureau_id if key == "elsewhere" else city.bureau_id,
                "roles": ["teacher", "moderator"] if key == "east_two" else ["teacher"], "group_ids": [],
                "active": True}, "2025-01-01T00:00:00Z")
    engine.dispose()
    with running(platform_config, ActivitiesService) as runner:
        yield runner


ADMIN = REPO_ROOT / ".venv" / "bin" / "lianxiao-admin"


def as_user(amqp_uri: str, user: str, password: str) -> str:
    parts = urlsplit(amqp_uri)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}:{parts.port or 5672}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def admin(platform_config: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "DATABASE_URL": platform_config["DATABASE_URL"]}
    return subprocess.run([str(ADMIN), *args, "--amqp-uri", platform_config["AMQP_URI"]], env=environment,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="package")
def subscriber(platform_config: dict[str, Any], city: City) -> Iterator[dict[str, Any]]:
    """`lianxiao-admin broker-user-create` for the city's first bureau, run as an operator would (and
    `broker-user-delete` afterwards)."""
    engine = make_engine(platform_config["DATABASE_URL"].replace("{service}", "accounts"))
    with Session(engine) as session:
        code = session.scalar(select(Bureau.code).where(Bureau.id == city.bureau_id))
    engine.dispose()
    user = f"sub-{uuid.uuid4().hex[:8]}"
    done = admin(platform_config, "broker-user-create", "--user", user, "--bureau", code)
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert created["binding_keys"] == [f"bureau.{city.bureau_id}.#"] and created["queue_prefix"] == f"{user}."
    again = admin(platform_config, "broker-user-create", "--user", user, "--bureau", code)
    assert again.returncode == 2 and "--replace" in again.stderr
    yield {"user": user, "uri": as_user(platform_config["AMQP_URI"], user, created["password"])}
    deleted = admin(platform_config, "broker-user-delete", "--user", user)
    assert deleted.returncode == 0 and json.loads(deleted.stdout) == {"user": user, "deleted": True}, deleted.stderr
    gone = admin(platform_config, "broker-user-delete", "--user", user)
    assert gone.returncode != 0 and "does not exist" in gone.stderr



@pytest.fixture
def start_gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    started: list[Gunicorn] = []

    def start(amqp_uri: str, **env: str) -> Gunicorn:
        server = Gunicorn(amqp_uri, tmp_path / f"gunicorn{len(started)}.log", **env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


