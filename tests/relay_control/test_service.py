"""The service's entrypoints with worker_factory: scope first, commits, pushes, typed errors."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
from nameko.testing.services import worker_factory
from sqlalchemy import select

from services.classroom_relay import dataplane_state, placement
from services.classroom_relay.exceptions import AdmissionRefused, DataPlaneUnavailable, InvalidInput
from services.classroom_relay.models import MBIT, outbox
from services.classroom_relay.service import ClassroomRelayService
from services.common.events import event_type_of

from .conftest import lesson


def lesson_now(school: dict, branch_ids: list[int] | None = None) -> dict:
    """A lesson in today's timetable (the service uses the real clock)."""
    master = school["master"]["id"]
    return lesson(at=datetime.now(UTC), master_classroom_id=master, branch_classroom_ids=branch_ids or [])


@pytest.fixture
def link(settings):
    """Stands in for DataPlaneLink: settings, a push request recorder, one reachable data plane, its stats."""
    return SimpleNamespace(settings=settings, request_push=MagicMock(), stats=None, outputs_by_dataplane=dict,
                           fleet=placement.Fleet.single, media_addresses=lambda: {"default": ["127.0.0.1", 5004]},
                           export_placements=MagicMock())


@pytest.fixture
def service(db, link):
    return worker_factory(ClassroomRelayService, db=db, dataplane=link)


def test_start_commits_and_asks_for_a_push(service, db, admin, school, link):
    created = service.create_session(admin.to_dict(), lesson_now(school, [school["branches"][0]["id"]]))
    link.request_push.assert_not_called()  # nothing live changed yet
    started = service.start_session(admin.to_dict(), created["id"])
    assert started["status"] == "live"
    link.request_push.assert_called_once()
    db.expire_all()
    assert dataplane_state.desired_state(db, link.settings)["sessions"][0]["session"] == f"session-{created['id']}"


def test_refusal_rolls_back_and_pushes_nothing(service, db, admin, school, link):
    rooms = [room["id"] for room in school["branches"]]
    created = service.create_session(admin.to_dict(), lesson_now(school, rooms[:2]))
    service.start_session(admin.to_dict(), created["id"])
    link.request_push.reset_mock()
    with pytest.raises(AdmissionRefused, match="school 101"):
        service.join_branch(admin.to_dict(), created["id"], rooms[2], {"downlink_bps": 40 * MBIT})
    link.request_push.assert_not_called()
    db.expire_all()
    states = [member["state"] for member in service.get_session(admin.to_dict(), created["id"])["classrooms"]]
    assert states == ["joined", "joined", "joined"]  # master and two branches; the third was never added


def test_missing_scope_and_bad_ids_are_invalid_input(service):
    with pytest.raises(InvalidInput, match="scope"):
        service.list_classrooms(None)
    with pytest.raises(InvalidInput):
        service.get_session({"bureau_id": 7, "kind": "bureau", "id": 7}, "one")


def test_sdp_waits_for_the_data_plane(service, admin, school):
    created = service.create_session(admin.to_dict(), lesson_now(school, [school["branches"][0]["id"]]))
    service.start_session(admin.to_dict(), created["id"])
    with pytest.raises(DataPlaneUnavailable):
        service.get_branch_sdp(admin.to_dict(), created["id"], school["branches"][0]["id"])


def test_join_token_names_the_media_address_of_the_sessions_data_plane(service, db, admin, school):
    created = service.create_session(admin.to_dict(), lesson_now(school))
    early = service.issue_join_token(admin.to_dict(), created["id"], school["master"]["id"])
    assert early["media_address"] is None and early["dataplane"] is None  # not placed before it starts
    db.rollback()  # end the read's transaction, as a real worker's session would
    service.start_session(admin.to_dict(), created["id"])
    issued = service.issue_join_token(admin.to_dict(), created["id"], school["master"]["id"])
    assert issued["dataplane"] == "default"
    assert issued["media_address"] == ["127.0.0.1", 5004]
    assert issued["classroom"] == f"classroom-{school['master']['id']}"


def test_health_timer_publishes_degraded_from_the_latest_stats(service, db, admin, school, link):
    branch = school["branches"][0]["id"]
    created = service.create_session(admin.to_dict(), lesson_now(school, [branch]))
    service.start_session(admin.to_dict(), created["id"])
    service.check_stream_health()  # no stats yet: nothing to judge
    link.export_placements.assert_called()  # the session gauges follow the database even so
    master = f"classroom-{school['master']['id']}"
    link.stats = {"sessions": {f"session-{created['id']}": {"master": master, "tracks": {}, "outputs": [
        {"classroom": f"classroom-{branch}", "source_classroom": master, "loss_ratio": 0.12,
         "budget_bytes_per_second": 5_000_000, "send_rate_bytes_per_second": 900_000}]}}}
    service.check_stream_health()
    db.expire_all()
    rows = db.execute(select(outbox.table.c.routing_key)).scalars().all()
    assert [event_type_of(key) for key in rows].count("stream.degraded") == 1
    [member] = [m for m in service.get_session(admin.to_dict(), created["id"])["classrooms"] if m["role"] == "branch"]
    assert member["stream_state"] == "degraded"


def test_set_recording_commits_asks_for_a_push_and_refuses_bad_input_typed(service, db, admin, school, link):
    created = service.create_session(admin.to_dict(), lesson_now(school))
    assert created["record"] is True  # a master-teacher lesson is recorded unless switched off
    service.start_session(admin.to_dict(), created["id"])
    link.request_push.reset_mock()
    switched = service.set_recording(admin.to_dict(), created["id"], {"record": False})
    assert switched["record"] is False
    link.request_push.assert_called_once()
    db.expire_all()
    assert service.get_session(admin.to_dict(), created["id"])["record"] is False
    db.rollback()  # the read's transaction
    link.request_push.reset_mock()
    with pytest.raises(InvalidInput, match="record"):
        service.set_recording(admin.to_dict(), created["id"], {"record": None})
    link.request_push.assert_not_called()
