"""Database access for nameko services: one engine per container, one session per worker.

Entrypoints commit themselves (`with self.db.begin():`) because nameko sends an RPC reply before
`worker_result` hooks run: committing there would let a caller see an answer before the data exists.
"""

from __future__ import annotations

from typing import Any

from nameko.extensions import DependencyProvider
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from services.common.config import database_url


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

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, **kwargs)


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
