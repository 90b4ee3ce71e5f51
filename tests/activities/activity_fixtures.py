"""Invented organisation ids and helpers shared by the activities tests."""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.activities import roster

BUREAU = 31
EAST_DISTRICT = 310
MASTER_SCHOOL = 3101  # an invented master school in the east district
BRANCH_SCHOOL = 3102
WEST_SCHOOL = 3201  # in another district


def teacher_body(teacher_id: int, school_id: int, district_id: int | None,
                 roles: tuple[str, ...] = ("teacher",), group_ids: tuple[int, ...] = ()) -> dict:
    """The body of accounts' `teacher.*` events."""
    return {
        "id": teacher_id, "school_id": school_id, "district_id": district_id, "bureau_id": BUREAU,
        "roles": list(roles), "group_ids": list(group_ids), "active": True, "staff_number": f"T{teacher_id}",
    }


def announce(session: Session, teacher_id: int, school_id: int, district_id: int | None,
             roles: tuple[str, ...] = ("teacher",), group_ids: tuple[int, ...] = (),
             routing_key: str = "teacher.joined", time: str = "2025-01-01T00:00:00Z") -> None:
    roster.apply_teacher_event(
        session, routing_key, teacher_body(teacher_id, school_id, district_id, roles, group_ids), time)
