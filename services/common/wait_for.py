"""Wait for what a process needs, then become it: `python -m services.common.wait_for [--broker]
[--databases | --migrated] [--timeout S] -- COMMAND...`.

Container runtimes that start a stack in order without waiting (podman-compose ignores `depends_on`
conditions) would otherwise start a service before RabbitMQ answers or before the migrations ran. A
clear message and exit status 1 after the timeout; the command replaces this process (same PID, same
signals) once everything answers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable

from services.common.config import WAIT_FOR_TIMEOUT

log = logging.getLogger("lianxiao.wait_for")


def broker_answers() -> None:
    from kombu import Connection

    from services.common.config import amqp_uri

    with Connection(amqp_uri(), connect_timeout=3) as connection:
        connection.connect()


def databases_answer() -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from services import platform
    from services.common.config import database_url

    for service in platform.SERVICE_NAMES:
        url = make_url(database_url(service))
        if url.get_backend_name() == "postgresql":
            url = url.set(database="postgres")  # the service's own database may not exist before migrating
        engine = create_engine(url, connect_args={"connect_timeout": 3} if "postgresql" in url.drivername else {})
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        finally:
            engine.dispose()


def databases_migrated() -> None:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from services import platform
    from services.common.db import make_engine
    from services.common.migrations import alembic_config

    for service in platform.SERVICE_NAMES:
        config = alembic_config(service)
        heads = set(ScriptDirectory.from_config(config).get_heads())
        engine = make_engine(config.attributes["url"])
        try:
            with engine.connect() as connection:
                current = set(MigrationContext.configure(connection).get_current_heads())
        finally:
            engine.dispose()
        if current != heads:
            raise LookupError(f"{service}'s database is at {sorted(current) or 'no revision'}, not {sorted(heads)}")


def wait(checks: dict[str, Callable[[], None]], timeout: float, interval: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    for what, check in checks.items():
        reported = False
        while True:
            try:
                check()
                break
            except Exception as error:  # whatever the driver raises while its peer is not there yet
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{what}: not ready after {timeout:.0f} s ({error})") from error
                if not reported:
                    log.warning("waiting for %s: %s", what, error)
                    reported = True
                time.sleep(interval)
        log.info("%s: ready", what)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", action="store_true", help="RabbitMQ at AMQP_URI accepts a connection")
    parser.add_argument("--databases", action="store_true", help="every service's PostgreSQL server answers")
    parser.add_argument("--migrated", action="store_true", help="every service's database is at its head revision")
    parser.add_argument("--timeout", type=float, default=WAIT_FOR_TIMEOUT.get())
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s wait_for %(levelname)s: %(message)s")
    log.setLevel(logging.INFO)
    checks: dict[str, Callable[[], None]] = {}
    if args.broker:
        checks["RabbitMQ"] = broker_answers
    if args.databases:
        checks["PostgreSQL"] = databases_answer
    if args.migrated:
        checks["migrations"] = databases_migrated
    try:
        wait(checks, args.timeout)
    except TimeoutError as error:
        print(f"wait_for: {error}", file=sys.stderr)
        sys.exit(1)
    sys.stdout.flush()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
