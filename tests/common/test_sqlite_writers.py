"""SQLite writers in one eventlet process take turns instead of failing "database is locked" (issue 12, item 11).

Two engines on one file, as the accounts service has (its Database and its outbox relay): one writes and
yields to the hub mid-transaction (an RPC, a child process, a publish), the other writes meanwhile.
"""

from __future__ import annotations

import time
from pathlib import Path

import eventlet
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, event, insert, select
from sqlalchemy.exc import OperationalError

from services.common import db
from services.common.db import make_engine
from services.common.errors import ServiceUnavailable

metadata = MetaData()
notes = Table("notes", metadata, Column("id", Integer, primary_key=True), Column("text", String(40)))


def writer(url: str, text: str, pause: float) -> float:
    engine = make_engine(url)
    started = time.monotonic()
    try:
        with engine.begin() as connection:
            connection.execute(insert(notes).values(text=text))
            eventlet.sleep(pause)  # the hub runs other greenlets while this transaction is open
        return time.monotonic() - started
    finally:
        engine.dispose()


def test_concurrent_writers_wait_their_turn(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'turns.db'}"
    setup = make_engine(url)
    metadata.create_all(setup)
    greenlets = [eventlet.spawn(writer, url, f"import {n}", 0.2) for n in range(6)]
    waits = [greenlet.wait() for greenlet in greenlets]  # before: OperationalError "database is locked"
    with setup.connect() as connection:
        stored = connection.execute(select(notes.c.text)).scalars().all()
    setup.dispose()
    assert sorted(stored) == sorted(f"import {n}" for n in range(6))
    assert max(waits) < 3.0, waits  # six turns of 0.2 s, not five-second busy timeouts


def test_a_reader_is_not_held_up_by_a_writer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'read.db'}"
    setup = make_engine(url)
    metadata.create_all(setup)
    slow = eventlet.spawn(writer, url, "slow import", 1.0)
    eventlet.sleep(0.1)
    started = time.monotonic()
    with setup.connect() as connection:
        connection.execute(select(notes.c.id)).all()
    assert time.monotonic() - started < 0.5
    slow.wait()
    setup.dispose()


def test_waiting_past_the_limit_is_a_503_not_a_500(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "SQLITE_WRITE_WAIT_SECONDS", 0.2)
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    setup = make_engine(url)
    metadata.create_all(setup)
    slow = eventlet.spawn(writer, url, "slow", 1.0)
    eventlet.sleep(0.1)
    with pytest.raises(ServiceUnavailable):
        writer(url, "impatient", 0)
    slow.wait()
    setup.dispose()


def test_a_lock_held_by_another_process_is_a_503(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path / 'other.db'}"
    setup = make_engine(url)
    metadata.create_all(setup)
    other = sqlite3.connect(tmp_path / "other.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # like the operator's CLI in the middle of a change
    engine = make_engine(url)

    @event.listens_for(engine, "connect")
    def short_busy_timeout(dbapi_connection, _record) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=100")

    try:
        with pytest.raises(ServiceUnavailable), engine.begin() as connection:
            connection.execute(insert(notes).values(text="blocked"))
    except OperationalError as error:  # pragma: no cover - the old behaviour
        pytest.fail(f"untyped database error: {error}")
    finally:
        other.execute("ROLLBACK")
        other.close()
        engine.dispose()
        setup.dispose()
