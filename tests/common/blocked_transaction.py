"""Two transactions at once in one test: the second runs in a greenthread while the first is held open.

psycopg2 blocks the whole process under eventlet, so `green_engine` gives connections that wait through
eventlet (psycopg2's wait callback) instead; `BlockedCall` waits until PostgreSQL shows the second
transaction waiting on the first's lock.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import eventlet
import psycopg2.extensions
from eventlet.hubs import trampoline
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool


def _wait_green(connection: Any, timeout: float | None = None) -> None:
    while True:
        state = connection.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        if state == psycopg2.extensions.POLL_READ:
            trampoline(connection.fileno(), read=True)
        elif state == psycopg2.extensions.POLL_WRITE:
            trampoline(connection.fileno(), write=True)
        else:
            raise psycopg2.OperationalError(f"unexpected poll state {state}")


@contextlib.contextmanager
def green_engine(url: str) -> Iterator[Engine]:
    """An engine whose connections (opened inside the block) let other greenthreads run while they wait."""
    previous = psycopg2.extensions.get_wait_callback()
    psycopg2.extensions.set_wait_callback(_wait_green)
    engine = create_engine(url, poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()
        psycopg2.extensions.set_wait_callback(previous)


class BlockedCall:
    def __init__(self, call: Callable[[], Any]) -> None:
        self.call = call
        self.thread: Any = None

    def start_and_wait_for_lock(self, engine: Engine, timeout: float = 10.0) -> None:
        """Start the call; return once a session of this database waits on a lock (or the call ended)."""
        self.thread = eventlet.spawn(self.call)
        deadline = time.monotonic() + timeout
        query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                     "AND wait_event_type = 'Lock'")
        with engine.connect() as connection:
            while not self.thread.dead and time.monotonic() < deadline:
                waiting = connection.execute(query).scalar()
                connection.rollback()  # pg_stat_activity is a snapshot per transaction: a new one each time
                if waiting:
                    return
                eventlet.sleep(0.02)
        assert self.thread.dead, "the second transaction neither waited on a lock nor finished"

    def finish(self, timeout: float = 10.0) -> None:
        with eventlet.Timeout(timeout):
            self.thread.wait()  # raises what the call raised
