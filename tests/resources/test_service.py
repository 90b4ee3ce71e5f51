"""The service's entrypoints with nameko's worker_factory over a real SQLite database: thin wrappers that
commit inside themselves, read their settings from nameko config, and settle observations by the answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nameko.testing.services import worker_factory

from services.common.errors import Forbidden, InvalidInput, NotFound, ServiceUnavailable, Unauthenticated
from services.common.scope import Scope
from services.resources.models import Watch
from services.resources.service import ResourcesService

from .conftest import BUREAU, add_recording, scope

CONFIG = {"PLAYBACK_SECRET": "unit-secret", "PLAYBACK_URL_LIFETIME": 90, "MEDIA_PUBLIC_URL": "https://m.example.test/",
          "WATCH_HEARTBEAT_SECONDS": 60, "OBSERVATION_MIN_SECONDS": 60, "RESOURCES_RETENTION_DAYS": 400}


class ActivitiesAnswer:
    """What activities' `record_activity` answers here: a fixed reply or a typed error, and what it was asked."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.calls: list[tuple[dict, dict]] = []

    def record_activity(self, scope: dict, data: dict) -> dict:
        self.calls.append((scope, data))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def service(db, outcome: Any = None) -> Any:
    answer = ActivitiesAnswer(outcome if outcome is not None else {"status": "accepted", "activity": {"id": "x"}})
    return worker_factory(ResourcesService, db=db, config=CONFIG, activities=answer)


def test_reads_and_settings_come_through_the_entrypoints(db):
    resource_id = add_recording(db, 101)
    worker = service(db)
    caller = scope("school", 101).to_dict()
    found = worker.search_resources(caller, {"school_id": "101"})
    assert [item["id"] for item in found["items"]] == [resource_id]
    urls = worker.playback(caller, resource_id)
    assert urls["hls_url"].startswith("https://m.example.test/media/")  # MEDIA_PUBLIC_URL, one slash
    expires = datetime.fromisoformat(urls["expires_at"])
    assert timedelta(seconds=80) < expires - datetime.now(UTC) <= timedelta(seconds=90)
    assert worker.get_retention(scope("bureau", BUREAU).to_dict())["days"] == 400
    assert worker.start_watch(caller, {"target_kind": "resource", "target_id": resource_id})["heartbeat_seconds"] == 60
    with pytest.raises(InvalidInput, match="scope"):
        worker.get_resource({"kind": "bureau"}, resource_id)
    with pytest.raises(NotFound):
        worker.get_resource(scope("school", 102).to_dict(), resource_id)
    with pytest.raises(Forbidden):
        worker.set_retention(scope("school", 101).to_dict(), {"days": 3})


def watched(db, worker: Any, seconds: int = 70) -> str:
    resource_id = add_recording(db, 101)
    caller = scope("school", 101).to_dict()
    watch = worker.start_watch(caller, {"target_kind": "resource", "target_id": resource_id,
                                        "viewer_teacher_id": 1101})
    with db.begin():  # as if it started `seconds` ago, with heartbeats all along
        row = db.get(Watch, watch["id"])
        row.started_at = row.last_heartbeat_at = datetime.now(UTC) - timedelta(seconds=seconds)
    worker.heartbeat(caller, watch["id"], {"seconds_watched": seconds})
    worker.end_watch(caller, watch["id"])
    return watch["id"]


def state(db, watch_id: str) -> tuple[str, str | None, str | None]:
    with db.begin():
        row = db.get(Watch, watch_id)
        return row.activity_state, row.activity_id, row.activity_note


def test_ending_a_teachers_watch_records_the_observation_with_the_callers_scope(db):
    worker = service(db, {"status": "accepted", "activity": {"id": "8d3c"}})
    watch_id = watched(db, worker)
    [(sent_scope, activity)] = worker.activities.calls
    assert Scope.from_dict(sent_scope) == scope("school", 101)
    assert activity["kind"] == "lesson_observation" and activity["details"]["duration_minutes"] == 1
    assert state(db, watch_id) == ("recorded", "8d3c", "accepted")
    worker.check_watches()  # nothing is pending any more: activities is not asked again
    assert len(worker.activities.calls) == 1


@pytest.mark.parametrize("error", [Forbidden("Teacher 1101 is outside this token's scope (school 101)."),
                                   Unauthenticated("The caller's scope signature has expired.")])
def test_a_refused_observation_is_kept_with_the_reason(db, error):
    worker = service(db, error)
    watch_id = watched(db, worker)
    activity_state, activity_id, note = state(db, watch_id)
    assert (activity_state, activity_id) == ("refused", None) and str(error) in note


def test_an_unavailable_activities_service_leaves_the_observation_pending_for_the_timer(db):
    worker = service(db, ServiceUnavailable("activities is restarting"))
    watch_id = watched(db, worker)
    assert state(db, watch_id)[0] == "pending"
    worker.activities.outcome = {"status": "duplicate", "activity": {"id": "8d3c"}}
    worker.check_watches()
    assert state(db, watch_id) == ("recorded", "8d3c", "duplicate")
    [first, second] = worker.activities.calls
    assert first[1]["id"] == second[1]["id"]  # the same activity id: idempotent in the activity log


def test_the_timer_ends_silent_watches(db):
    worker = service(db)
    resource_id = add_recording(db, 101)
    watch = worker.start_watch(scope("bureau", BUREAU).to_dict(), {"target_kind": "resource",
                                                                   "target_id": resource_id})
    with db.begin():
        db.get(Watch, watch["id"]).last_heartbeat_at = datetime.now(UTC) - timedelta(seconds=121)
    worker.check_watches()
    with db.begin():
        row = db.get(Watch, watch["id"])
        assert (row.end_reason, row.counted_as) == ("silent", "supervision")
    assert worker.activities.calls == []
