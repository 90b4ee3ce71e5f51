"""Shared fixtures: a RabbitMQ vhost per test (nameko's `rabbit_config`), PostgreSQL databases per run.

The nameko pytest plugin no longer monkey-patches on pytest 8+, so it is done here, first.
"""

# ruff: noqa: E402, I001  (eventlet must be patched before anything else is imported)
from __future__ import annotations

import services  # noqa: F401  (silences eventlet's notice before eventlet is imported)

import eventlet

eventlet.monkey_patch()

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import MetaData, create_engine, text
from sqlalchemy.orm import Session

from services.common import migrations
from services.common.db import make_engine
from services.platform import SERVICE_NAMES

POSTGRES_SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def run_id() -> str:
    """Names this test run's databases so concurrent runs never see each other."""
    return f"lxt_{os.getpid()}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def database_url(run_id: str) -> Iterator[str]:
    """A PostgreSQL URL template with `{service}`; databases are created on first use, dropped after."""
    base = POSTGRES_SERVER.rsplit("/", 1)[0]
    template = f"{base}/{run_id}_{{service}}"
    yield template
    admin = create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        names = connection.execute(
            text("SELECT datname FROM pg_database WHERE datname LIKE :prefix"), {"prefix": f"{run_id}_%"}
        ).scalars().all()
        for name in names:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


_migrated: set[str] = set()


@pytest.fixture(scope="session")
def migrate(database_url: str) -> Callable[[str], str]:
    """Migrate one service's database of this run (once) and return its URL."""

    def migrate_service(service: str) -> str:
        url = database_url.replace("{service}", service)
        if url not in _migrated:
            migrations.upgrade(service, url)
            _migrated.add(url)
        return url

    return migrate_service


@pytest.fixture
def service_config(rabbit_config: dict[str, Any], database_url: str, migrate: Callable[[str], str]) -> dict:
    """nameko config for services under test: this test's vhost, this run's databases, metrics on a free port."""
    for service in SERVICE_NAMES:
        migrate(service)
    return {
        **rabbit_config,
        "DATABASE_URL": database_url,
        "METRICS_PORT": 0,
        "serializer": "json",
        "max_workers": 10,
    }


@pytest.fixture
def sqlite_session(tmp_path: Any) -> Iterator[Callable[[MetaData], Session]]:
    """Sessions on a real SQLite database holding one service's tables: domain logic without a broker."""
    engines = []

    def open_session(metadata: MetaData) -> Session:
        engine = make_engine(f"sqlite:///{tmp_path / f'domain{len(engines)}.db'}")
        engines.append(engine)
        metadata.create_all(engine)
        return Session(engine, expire_on_commit=False)

    yield open_session
    for engine in engines:
        engine.dispose()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Invented, collision-free codes for fixture data shared within a run."""
    return lambda prefix: f"{prefix}{uuid.uuid4().hex[:8]}"
