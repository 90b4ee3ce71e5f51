from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

from services.activities.models import metadata
from services.common.db import make_engine
from services.common.scope import Scope
from tests.activities.activity_fixtures import (
    BRANCH_SCHOOL,
    BUREAU,
    EAST_DISTRICT,
    MASTER_SCHOOL,
    WEST_SCHOOL,
    announce,
)


@pytest.fixture
def session(tmp_path) -> Iterator[Session]:
    """A real (SQLite) database for the domain logic, with three announced teachers."""
    engine = make_engine(f"sqlite:///{tmp_path / 'activities.db'}")
    metadata.create_all(engine)
    with Session(engine, expire_on_commit=False) as db_session:
        announce(db_session, 1, MASTER_SCHOOL, EAST_DISTRICT, group_ids=(7,))
        announce(db_session, 2, BRANCH_SCHOOL, EAST_DISTRICT, roles=("teacher", "blog_host"))
        announce(db_session, 3, WEST_SCHOOL, 320)
        db_session.commit()
        yield db_session
    engine.dispose()


@pytest.fixture
def bureau_scope() -> Scope:
    return Scope(BUREAU, "bureau", BUREAU, "write", token_id=1)


@pytest.fixture
def master_scope() -> Scope:
    return Scope(BUREAU, "school", MASTER_SCHOOL, "write", token_id=2)
