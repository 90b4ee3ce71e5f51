"""Alembic migrations per service, run programmatically (`python -m services.common.migrations`).

Every service keeps its scripts in `services/<service>/migrations/`; their `env.py` calls `run_env()`
so the Alembic wiring exists once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, create_engine, text
from sqlalchemy.engine import make_url

from services import platform
from services.common.config import REPO_ROOT, database_url
from services.common.db import make_engine


def alembic_config(service: str, url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(REPO_ROOT / "services" / service / "migrations"))
    config.attributes["service"] = service
    config.attributes["url"] = url or database_url(service)
    return config


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database (or the SQLite file's folder) if it does not exist yet."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        return
    if parsed.get_backend_name() != "postgresql":
        return
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": parsed.database}
            ).first()
            if not exists:
                connection.exec_driver_sql(f'CREATE DATABASE "{parsed.database}"')
    finally:
        admin.dispose()


def drop_database(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and Path(parsed.database).exists():
            Path(parsed.database).unlink()
        return
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
    finally:
        admin.dispose()


def upgrade(service: str, url: str | None = None, revision: str = "head") -> None:
    config = alembic_config(service, url)
    ensure_database(config.attributes["url"])
    command.upgrade(config, revision)


def service_metadata(service: str) -> MetaData:
    return importlib.import_module(platform.service(service).models_module).metadata


def run_env() -> None:
    """The body of every service's Alembic `env.py`."""
    config = context.config
    service = config.attributes["service"]
    engine = make_engine(config.attributes["url"])
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=service_metadata(service),
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description="Migrate the databases of lianxiao's services.")
    parser.add_argument("action", choices=["upgrade", "revision"])
    parser.add_argument("services", nargs="*", default=list(platform.SERVICE_NAMES))
    parser.add_argument("-m", "--message", default="schema")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for service in args.services:
        if args.action == "upgrade":
            upgrade(service)
            print(f"migrated {service}: {make_url(database_url(service)).render_as_string(hide_password=True)}")
        else:
            config = alembic_config(service)
            ensure_database(config.attributes["url"])
            command.upgrade(config, "head")
            command.revision(config, message=args.message, autogenerate=True)


if __name__ == "__main__":
    main()
