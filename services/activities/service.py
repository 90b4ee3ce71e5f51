"""The activities service: RPC entrypoints and event handlers only; the logic lives in its modules.

Every RPC takes the caller's scope (a dict, as the gateway got it from accounts' `verify_token`) first.
Consumed events: accounts' `teacher.joined/changed/left` (its roster) and the classroom relay's
`session.ended` / `classroom.left` (see `classroom.py`), each applied once (`cloud_event_handler`
deduplicates). Published: see docs/events/asyncapi.yaml.
"""

from __future__ import annotations

from typing import Any

from services.activities import classroom, log, moderation, queries, replay, roster, xapi
from services.activities.models import outbox, processed_events
from services.common.db import Database
from services.common.entrypoints import rpc
from services.common.events import OutboxRelay, QueuePublisher
from services.common.health import HealthRpc
from services.common.metrics import ServiceMetrics
from services.common.scope import Scope
from services.common.subscriber import cloud_event_handler


class ActivitiesService(HealthRpc):
    name = "activities"

    db = Database("activities")
    metrics = ServiceMetrics("activities")
    events = OutboxRelay(outbox)
    queues = QueuePublisher()  # replay's straight-to-a-queue publishing

    # --- recording ------------------------------------------------------------------------------
    @rpc
    def record_activity(self, scope: dict, data: dict) -> dict[str, Any]:
        """{"status": "accepted"|"duplicate", "activity": {...}}; Conflict when the id has other content."""
        with self.db.begin():
            return log.record(self.db, Scope.from_dict(scope), data)

    @rpc
    def record_activities(self, scope: dict, items: list) -> dict[str, Any]:
        """Up to 500; {"results": [{index, id, status, reason?...}], "accepted", "duplicate", "rejected"}."""
        with self.db.begin():
            return log.record_batch(self.db, Scope.from_dict(scope), items)

    @rpc
    def hide_activity(self, scope: dict, activity_id: str, data: dict) -> dict[str, Any]:
        with self.db.begin():
            return moderation.hide(self.db, Scope.from_dict(scope), activity_id, data)

    # --- reading --------------------------------------------------------------------------------
    @rpc
    def get_activity(self, scope: dict, activity_id: str) -> dict[str, Any]:
        return log.get_activity(self.db, Scope.from_dict(scope), activity_id)

    @rpc
    def list_activities(self, scope: dict, params: dict | None = None) -> dict[str, Any]:
        return queries.list_activities(self.db, Scope.from_dict(scope), params or {})

    @rpc
    def query_statements(self, scope: dict, params: dict | None = None) -> dict[str, Any]:
        return xapi.query_statements(self.db, Scope.from_dict(scope), params or {})

    # --- the event stream -----------------------------------------------------------------------
    @rpc
    def replay_events(self, scope: dict, data: dict) -> dict[str, Any]:
        """Re-publish events since `since` (matching `routing_keys`) to the existing queue `queue`."""
        with self.queues() as publish:
            return replay.replay(self.db, Scope.from_dict(scope), data, publish)

    @cloud_event_handler("accounts", roster.TEACHER_EVENT_KEYS, processed=processed_events)
    def on_teacher_event(self, body: dict, attributes: dict) -> None:
        roster.apply_teacher_event(self.db, attributes["routing_key"], body, attributes.get("time"))

    @cloud_event_handler("classroom_relay", classroom.CLASSROOM_ROUTING_KEYS, processed=processed_events)
    def on_classroom_session(self, body: dict, attributes: dict) -> None:
        classroom.record_session_event(self.db, attributes["routing_key"], body)
