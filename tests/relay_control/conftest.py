"""Fixtures of the relay control-plane tests: a SQLite session and a small invented joint school."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from services.classroom_relay import classrooms, relay_settings
from services.classroom_relay.models import MBIT, metadata
from services.classroom_relay.school_facts import StaticFacts
from services.common.scope import Scope

BUREAU = 7
OTHER_BUREAU = 8
NOW = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday morning
# What accounts knows: master school 101 (district 1, 100 Mbit/s), schools 102–106 (district 2, 50 Mbit/s),
# another master school 201 (district 3, 100 Mbit/s), bureau 8's school 301; teacher 501 teaches at 101,
# 502 at 102, 503 at 103, 601 at bureau 8's 301.
FACTS = StaticFacts(
    school_rows={
        101: {"bureau_id": BUREAU, "district_id": 1, "link_capacity_bps": 100 * MBIT},
        **{school: {"bureau_id": BUREAU, "district_id": 2, "link_capacity_bps": 50 * MBIT}
           for school in range(102, 107)},
        201: {"bureau_id": BUREAU, "district_id": 3, "link_capacity_bps": 100 * MBIT},
        301: {"bureau_id": OTHER_BUREAU, "district_id": 9, "link_capacity_bps": 100 * MBIT},
    },
    teacher_rows={501: 101, 502: 102, 503: 103, 601: 301},
)


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


@pytest.fixture
def facts() -> StaticFacts:
    return FACTS


def classroom(db: Session, scope: Scope, school_id: int, name: str, kind: str, **extra) -> dict:
    data = {"school_id": school_id, "name": name, "kind": kind, **extra}
    return classrooms.create_classroom(db, scope, data, FACTS)


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
