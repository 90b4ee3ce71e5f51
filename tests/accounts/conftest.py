from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

from services.accounts import directory
from services.accounts.models import metadata
from services.common.scope import Scope


@pytest.fixture
def session(sqlite_session) -> Iterator[Session]:
    with sqlite_session(metadata) as db_session:
        yield db_session


@pytest.fixture
def city(session: Session) -> dict:
    """A small invented bureau: two districts, a master and a branch school, one school elsewhere."""
    bureau = directory.create_bureau(session, {"code": "qingshan", "name": "青山市教育局"})
    admin = Scope.bureau_admin(bureau["id"])
    east = directory.create_district(session, admin, {"bureau_id": bureau["id"], "name": "东片区"})
    west = directory.create_district(session, admin, {"bureau_id": bureau["id"], "name": "西片区"})
    master = directory.create_school(session, admin, {
        "bureau_id": bureau["id"], "district_id": east["id"], "code": "QS-01", "name": "青山一中", "kind": "master",
    })
    branch = directory.create_school(session, admin, {
        "bureau_id": bureau["id"], "district_id": east["id"], "code": "QS-02", "name": "柳湾小学", "kind": "branch",
    })
    other = directory.create_school(session, admin, {
        "bureau_id": bureau["id"], "district_id": west["id"], "code": "QS-03", "name": "西岭中学",
    })
    session.commit()
    return {
        "bureau": bureau, "admin": admin, "east": east, "west": west,
        "master": master, "branch": branch, "other": other,
    }
