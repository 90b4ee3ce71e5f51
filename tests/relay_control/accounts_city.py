"""Invented schools and teachers in accounts' database (as the operator's command-line tool writes them), for
the relay's integration tests: the relay asks accounts about every school and teacher it is given."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from services.accounts import directory
from services.common.db import make_engine
from services.common.scope import Scope


@dataclass
class InventedBureau:
    bureau_id: int
    schools: list[int]
    teachers: list[int]  # one per school, same order
    other_bureau_school: int

    @property
    def admin(self) -> dict[str, Any]:
        return Scope.bureau_admin(self.bureau_id).to_dict()


def invent_bureau(service_config: dict[str, Any], links_bps: list[int]) -> InventedBureau:
    """A bureau with one school per link given (each with a teacher), and another bureau's school."""
    engine = make_engine(service_config["DATABASE_URL"].replace("{service}", "accounts"))
    tag = uuid.uuid4().hex[:8]
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            bureau = directory.create_bureau(session, {"code": f"lq{tag}", "name": f"临泉市教育局{tag}"})
            other = directory.create_bureau(session, {"code": f"sh{tag}", "name": f"沙河县教育局{tag}"})
            admin = Scope.bureau_admin(bureau["id"])
            schools, teachers = [], []
            for index, bps in enumerate(links_bps):
                school = directory.create_school(session, admin, {
                    "bureau_id": bureau["id"], "code": f"S{index}-{tag}", "name": f"临泉第{index}小学",
                    "link_capacity_bps": bps})
                schools.append(school["id"])
                teachers.append(directory.create_teacher(session, admin, {
                    "school_id": school["id"], "staff_number": f"T{index}{tag}", "name": f"教师{index}号",
                    "subject": "数学", "grade": "四年级"})["id"])
            stranger = directory.create_school(session, Scope.bureau_admin(other["id"]), {
                "bureau_id": other["id"], "code": f"X-{tag}", "name": "沙河实验学校"})
    finally:
        engine.dispose()
    return InventedBureau(bureau["id"], schools, teachers, stranger["id"])
