"""Fixtures of the resources tests: an invented city as the relay's and accounts' events describe it.

Bureau 5 (districts 11 东片区 and 12 西片区): schools 101 and 102 in the east, 103 and 104 in the west;
101 and 104 form the alliance 1 (湖畔联校). Bureau 6 has school 201. Each school's teacher is 1000 + school.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session

from services.common.scope import Scope
from services.resources import catalog
from services.resources.models import metadata

BUREAU, OTHER_BUREAU = 5, 6
EAST, WEST = 11, 12
DISTRICT_OF = {101: EAST, 102: EAST, 103: WEST, 104: WEST, 201: None}
BUREAU_OF = {101: BUREAU, 102: BUREAU, 103: BUREAU, 104: BUREAU, 201: OTHER_BUREAU}
LESSON_START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # 09:00 in the bureau's time zone
_ids = itertools.count(1)


def recording_body(school_id: int, **overrides: Any) -> dict[str, Any]:
    """A `recording.available` body as docs/recording.md describes it."""
    number = next(_ids)
    started = overrides.pop("started_at", LESSON_START + timedelta(days=number))
    duration = overrides.pop("duration_seconds", 2700.0)
    body = {
        "recording_id": 5000 + number, "key": f"rec-{5000 + number}", "session_id": 700 + number,
        "session_kind": "dedicated_delivery", "title": None, "school_id": school_id, "classroom_id": 30 + number,
        "teacher_id": 1000 + school_id, "subject": "数学", "grade": "七年级", "district_id": DISTRICT_OF[school_id],
        "started_at": started.isoformat(), "ended_at": (started + timedelta(seconds=duration)).isoformat(),
        "duration_seconds": duration,
        "tracks": [{"track": "audio", "kind": "audio", "source": "master", "codec": "opus"},
                   {"track": "camera", "kind": "video", "source": "master", "codec": "h264"}],
        "files": {"hls": "index.m3u8", "courseware_hls": None, "program_mp4": "program.mp4", "courseware_mp4": None},
        "gaps": [], "bytes": 123456,
    }
    body.update(overrides)
    return body


@pytest.fixture
def db(sqlite_session: Callable[[Any], Session]) -> Iterator[Session]:
    session = sqlite_session(metadata)
    with session.begin():
        for school_id, district in DISTRICT_OF.items():
            catalog.apply_accounts_event(session, "school.created", {
                "id": school_id, "bureau_id": BUREAU_OF[school_id], "district_id": district,
                "code": f"S{school_id}", "name": f"学校{school_id}", "kind": "ordinary"}, BUREAU_OF[school_id])
        catalog.apply_accounts_event(session, "alliance.created", {
            "id": 1, "bureau_id": BUREAU, "name": "湖畔联校", "lead_school_id": 101, "member_school_ids": [101],
        }, BUREAU)
        catalog.apply_accounts_event(session, "school.joined_alliance",
                                     {"alliance_id": 1, "school_id": 104, "lead": False}, BUREAU)
    yield session
    session.close()


def add_recording(session: Session, school_id: int, **overrides: Any) -> int:
    """A resource made from a `recording.available` event; its id."""
    with session.begin():
        resource = catalog.recording_available(session, recording_body(school_id, **overrides), BUREAU_OF[school_id])
        return resource.id


def scope(kind: str, ident: int, access: str = "write", bureau: int = BUREAU) -> Scope:
    return Scope(bureau_id=bureau, kind=kind, id=ident, access=access)
