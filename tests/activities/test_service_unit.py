"""The service's entrypoints with nameko's worker_factory: thin wrappers that commit inside themselves."""

from __future__ import annotations

from unittest.mock import patch

import pytest
from nameko.testing.services import worker_factory

from services.activities.exceptions import InvalidInput
from services.activities.service import ActivitiesService
from services.common.scope import Scope

SCOPE = {"bureau_id": 31, "kind": "bureau", "id": 31, "access": "write"}


def test_record_activity_runs_inside_the_entrypoints_transaction():
    service = worker_factory(ActivitiesService)
    with patch("services.activities.service.log.record", return_value={"status": "accepted"}) as record:
        assert service.record_activity(SCOPE, {"kind": "blog_post"}) == {"status": "accepted"}
    session, scope, data = record.call_args.args
    assert session is service.db and scope == Scope.from_dict(SCOPE) and data == {"kind": "blog_post"}
    service.db.begin.assert_called_once_with()


def test_a_malformed_scope_is_a_typed_error_before_any_work():
    service = worker_factory(ActivitiesService)
    with pytest.raises(InvalidInput, match="scope"):
        service.list_activities({"kind": "bureau"}, {})


def test_an_already_processed_classroom_event_changes_nothing():
    service = worker_factory(ActivitiesService)
    with patch("services.activities.service.processed_events.first_time", return_value=False), \
            patch("services.activities.service.classroom.record_session_event") as record:
        service.on_classroom_session({"session_id": "s"}, {"id": "e1", "type": "t", "routing_key": "session.ended"})
    record.assert_not_called()
