"""Gateway fixtures: the real accounts service on RabbitMQ + PostgreSQL, and the gateway under gunicorn.

One accounts service and one gunicorn gateway serve the whole package (starting them per test would
cost ~2 s each); tests that stop a service build their own with `runner_factory` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nameko.runners import ServiceRunner

from services.accounts.service import AccountsService

from .gateway_support import City, Gunicorn, build_city


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


