"""Fixtures of the relay control-plane tests: a SQLite session and a small invented joint school."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from services.classroom_relay import classrooms, relay_settings
from services.classroom_relay.models import MBIT, metadata
from services.common.scope import Scope

BUREAU = 7
NOW = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday morning


@pytest.fixture
def db(sqlite_session) -> Iterator[Session]:
    with sqlite_session(metadata) as db_session:
        yield db_session


@pytest.fixture
def settings() -> relay_settings.RelaySettings:
    return relay_settings.RelaySettings(join_secrets=["unit-test-secret"], headroom=0.9)


@pytest.fixture
def admin() -> Scope:
    return Scope.bureau_admin(BUREAU)


def classroom(db: Session, scope: Scope, school_id: int, name: str, kind: str, **extra) -> dict:
    data = {"school_id": school_id, "bureau_id": BUREAU, "name": name, "kind": kind, **extra}
    return classrooms.create_classroom(db, scope, data)


@pytest.fixture
def school(db: Session, admin: Scope) -> dict:
    """Master school 101 (100 Mbit/s) with a broadcasting room; branch schools 102–104 (50 Mbit/s links)
    with receiving rooms of 50 Mbit/s downlink. Lessons give each branch 40 Mbit/s (`lesson`): three of
    them cannot all fit in 90 % of the master's 100 Mbit/s."""
    master = classroom(db, admin, 101, "录播教室", "broadcasting", school_link_capacity_bps=100 * MBIT)
    branches = [
        classroom(db, admin, 101 + index, f"接收教室{index}", "receiving", school_link_capacity_bps=50 * MBIT,
                  downlink_capacity_bps=50 * MBIT, receive_host="127.0.0.1", receive_port=40000 + 2 * index)
        for index in (1, 2, 3)
    ]
    db.commit()
    return {"master": master, "branches": branches}


def lesson(kind: str = "master_teacher", at: datetime = NOW, **extra) -> dict:
    return {
        "kind": kind,
        "title": "四年级数学",
        "branch_bps": 40 * MBIT,
        "starts_at": at.isoformat(),
        "ends_at": (at + timedelta(minutes=40)).isoformat(),
        **extra,
    }
