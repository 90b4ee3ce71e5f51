"""Fixtures for reporting: a SQLite read-model database and an invented city's events.

Activity events are built with activities' own `xapi.statement`, so the adapter is tested against
what the producer really sends.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.orm import Session

from services.activities import xapi
from services.activities.models import Activity
from services.activities.schemas import KINDS
from services.reporting.models import metadata

BUREAU = 7
SPRING_TERM = {"code": "2025-spring", "name": "2025年春季学期", "starts_on": "2025-02-17", "ends_on": "2025-07-11"}


@dataclass
class Event:
    routing_key: str
    body: dict[str, Any]
    attributes: dict[str, Any]


def event(routing_key: str, body: dict[str, Any], *, event_id: str | None = None,
          time: str = "2025-02-01T00:00:00Z") -> Event:
    return Event(routing_key, body, {"id": event_id or str(uuid.uuid4()), "type": routing_key, "time": time,
                                     "routing_key": routing_key})


@dataclass
class CityEvents:
    """A tiny invented city, as the events accounts and activities would publish."""

    events: list[Event] = field(default_factory=list)
    counter: int = 0

    def school(self, school_id: int, district_id: int, name: str) -> None:
        self.events.append(event("school.created", {"id": school_id, "bureau_id": BUREAU, "district_id": district_id,
                                                    "code": f"S{school_id}", "name": name, "kind": "ordinary"}))

    def district(self, district_id: int, name: str) -> None:
        self.events.append(event("district.created", {"id": district_id, "bureau_id": BUREAU, "name": name}))

    def group(self, group_id: int, school_id: int, name: str) -> None:
        self.events.append(event("group.created", {"id": group_id, "bureau_id": BUREAU, "school_id": school_id,
                                                   "kind": "research", "name": name, "subject": "数学"}))

    def teacher(self, teacher_id: int, school_id: int, district_id: int, roles: list[str] | None = None,
                routing_key: str = "teacher.joined", active: bool = True, time: str = "2025-02-01T00:00:00Z",
                group_ids: list[int] | None = None) -> None:
        self.events.append(event(routing_key, {
            "id": teacher_id, "school_id": school_id, "district_id": district_id, "bureau_id": BUREAU,
            "staff_number": f"T{teacher_id:04d}", "subject": "数学", "grade": "七年级", "active": active,
            "roles": roles or ["teacher"], "group_ids": group_ids or [],
        }, time=time))

    def activity(self, teacher_id: int, school_id: int, kind: str, occurred_at: str, *, online: Decimal = Decimal(0),
                 offline: Decimal = Decimal(0), group_id: int | None = None, district_id: int = 1,
                 corrects: str | None = None) -> str:
        self.counter += 1
        activity = Activity(
            id=str(uuid.uuid4()), kind=kind, object_id=str(uuid.uuid4()), teacher_id=teacher_id,
            school_id=school_id, district_id=district_id, bureau_id=BUREAU, group_id=group_id,
            occurred_at=datetime.fromisoformat(occurred_at), duration_minutes=int((online + offline) * 60),
            online_hours=online, offline_hours=offline, details=json.dumps({}), recorded_at=datetime.now(UTC),
            corrects_id=corrects,
        )
        verb = "corrected" if corrects else "recorded"
        self.events.append(event(f"activity.{verb}.{kind}", xapi.statement(activity), event_id=activity.id))
        return activity.id

    def recorded(self, teacher_id: int, school_id: int, kind: str, occurred_at: str, details: dict[str, Any],
                 *, group_id: int | None = None, district_id: int = 1) -> str:
        """An activity exactly as activities records it: its details, and the minutes and hours its
        own schema records (services/activities/schemas.py)."""
        loaded = KINDS[kind]().load(details)
        minutes, online, offline = KINDS[kind]().recorded_time(loaded)
        activity = Activity(
            id=str(uuid.uuid4()), kind=kind, object_id=str(uuid.uuid4()), teacher_id=teacher_id,
            school_id=school_id, district_id=district_id, bureau_id=BUREAU, group_id=group_id,
            occurred_at=datetime.fromisoformat(occurred_at), duration_minutes=minutes, online_hours=online,
            offline_hours=offline, details=json.dumps(details, ensure_ascii=False), recorded_at=datetime.now(UTC),
        )
        self.events.append(event(f"activity.recorded.{kind}", xapi.statement(activity), event_id=activity.id))
        return activity.id

    def hide(self, statement_id: str, kind: str = "blog_post") -> None:
        body = {"id": str(uuid.uuid4()), "object": {"objectType": "StatementRef", "id": statement_id}}
        self.events.append(event(f"activity.hidden.{kind}", body, event_id=body["id"]))


@pytest.fixture
def session(sqlite_session) -> Iterator[Session]:
    with sqlite_session(metadata) as db_session:
        yield db_session


@pytest.fixture
def make_session(sqlite_session):
    """More than one independent database (incremental vs rebuilt)."""
    return lambda _name: sqlite_session(metadata)


def small_city() -> CityEvents:
    """Two districts, three schools, a group; teachers with various roles and activity."""
    city = CityEvents()
    city.district(1, "东片区")
    city.district(2, "西片区")
    city.school(11, 1, "青禾小学")
    city.school(12, 1, "松涛中学")
    city.school(21, 2, "云溪小学")
    city.group(501, 11, "七年级数学组")
    for teacher_id in range(101, 106):
        city.teacher(teacher_id, 11, 1, group_ids=[501])
    city.teacher(106, 11, 1, roles=["principal", "teacher"])
    for teacher_id in range(201, 204):
        city.teacher(teacher_id, 12, 1)
    city.teacher(301, 21, 2)
    return city
