"""Database access for nameko services: one engine per container, one session per worker.

Entrypoints commit themselves (`with self.db.begin():`) because nameko sends an RPC reply before
`worker_result` hooks run: committing there would let a caller see an answer before the data exists.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import psycopg2
from nameko.extensions import DependencyProvider
from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.common.config import database_url
from services.common.errors import Conflict, ServiceUnavailable

# A stopped or unreachable PostgreSQL must fail a request within seconds, not hang it: psycopg2
# would otherwise wait for the kernel's TCP connect timeout (minutes) on a host that went away.
CONNECT_TIMEOUT_SECONDS = 2

# Deterministic constraint names, so Alembic migrations can refer to (and drop) constraints on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def service_metadata() -> MetaData:
    """The `MetaData` of one service's tables, with the platform's naming convention."""
    return MetaData(naming_convention=NAMING_CONVENTION)


# SQLite (`make run`'s embedded default) allows one writer at a time. Its busy wait sleeps inside C, which
# under eventlet stops the whole process: the greenlet holding the write lock can never finish, so the
# waiter timed out with "database is locked" (issue 12, item 11). Writers in one process therefore take
# turns on a lock that eventlet can wait on, from their first write statement to commit or rollback;
# SQLite's own busy wait is left for other processes (the operator's CLI).
SQLITE_WRITE_WAIT_SECONDS = 25.0
SQLITE_WRITE_STATEMENTS = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_sqlite_write_locks: dict[str, threading.Semaphore] = {}
_sqlite_write_locks_guard = threading.Lock()
HOLDS_WRITE_LOCK = "lianxiao_holds_sqlite_write_lock"


def sqlite_write_lock(url: str) -> threading.Semaphore:
    """One lock per database file and process, shared by every engine on it (service and outbox relay)."""
    with _sqlite_write_locks_guard:
        return _sqlite_write_locks.setdefault(url, threading.Semaphore(1))


def serialise_sqlite_writes(engine: Engine, lock: threading.Semaphore) -> None:
    def release(info: dict[str, Any]) -> None:
        if info.pop(HOLDS_WRITE_LOCK, False):
            lock.release()

    @event.listens_for(engine, "before_cursor_execute")
    def _take_turn(connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if connection.info.get(HOLDS_WRITE_LOCK) or not statement.lstrip()[:7].upper().startswith(
            SQLITE_WRITE_STATEMENTS
        ):
            return
        if not lock.acquire(timeout=SQLITE_WRITE_WAIT_SECONDS):
            raise ServiceUnavailable("The database is busy with other changes; please retry shortly.")
        connection.info[HOLDS_WRITE_LOCK] = True

    event.listen(engine, "commit", lambda connection: release(connection.info))
    event.listen(engine, "rollback", lambda connection: release(connection.info))
    # A connection returned or reset without either (an error, garbage collection) releases it too.
    event.listen(engine.pool, "checkin", lambda _dbapi, record: release(record.info))
    @event.listens_for(engine.pool, "reset")
    def _reset(_dbapi: Any, record: Any, _reset_state: Any) -> None:
        release(record.info)


def sqlite_busy(context: ExceptionContext) -> ServiceUnavailable | None:
    """Another process held SQLite's write lock past the busy timeout: 503 (retry), never a 500."""
    if isinstance(context.original_exception, sqlite3.OperationalError) and "locked" in str(
        context.original_exception
    ):
        return ServiceUnavailable("The database is busy with other changes; please retry shortly.")
    return None


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

        serialise_sqlite_writes(engine, sqlite_write_lock(url))
        event.listen(engine, "handle_error", sqlite_busy)
        return engine
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS, **kwargs.pop("connect_args", {})}
    engine = create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args=connect_args, **kwargs
    )
    event.listen(engine, "handle_error", database_unavailable)
    return engine


def database_unavailable(context: ExceptionContext) -> ServiceUnavailable | None:
    """A database that cannot be reached becomes `ServiceUnavailable` (503 + Retry-After at the gateway).

    Without this, psycopg2's `OperationalError` (connection refused, server shutting down, connection
    lost) reached callers as an untyped remote error, i.e. a 500 that tells a client not to retry.
    Pre-ping failures are left alone: the pool needs them to replace stale connections silently.
    """
    if context.is_pre_ping:
        return None
    if context.is_disconnect or isinstance(context.original_exception, psycopg2.OperationalError):
        return ServiceUnavailable("The database is unavailable right now; please retry shortly.")
    return None


class Database(DependencyProvider):
    """Injects a SQLAlchemy `Session`; closed (and rolled back if left open) after each worker."""

    def __init__(self, service_name: str) -> None:
        self.service_name = service_name
        self.engine: Engine | None = None
        self.session_factory: sessionmaker[Session] | None = None
        self.sessions: dict[Any, Session] = {}

    def setup(self) -> None:
        self.engine = make_engine(database_url(self.service_name, self.container.config))
        self.session_factory = sessionmaker(bind=self.engine, expire_on_commit=False)

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.dispose()

    def kill(self) -> None:
        self.stop()

    def get_dependency(self, worker_ctx: Any) -> Session:
        assert self.session_factory is not None
        session = self.session_factory()
        self.sessions[worker_ctx] = session
        return session

    def worker_teardown(self, worker_ctx: Any) -> None:
        session = self.sessions.pop(worker_ctx, None)
        if session is not None:
            session.close()

    def ping(self) -> bool:
        assert self.engine is not None
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        return True


def flush_or_conflict(session: Session, detail: str) -> None:
    """Flush; a unique-key clash becomes a `Conflict` with `detail`.

    Compose `detail` before calling: after a failed flush the session's objects are expired and reading
    them raises, which used to turn a plain duplicate into a 500.
    """
    try:
        session.flush()
    except IntegrityError as error:
        raise Conflict(detail) from error
