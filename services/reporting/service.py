"""The reporting service: quota reports over RPC, read models kept from accounts' and activities' events.

Every RPC takes the caller's scope first: a school sees itself, a district its schools, the bureau
everything. Events are applied in batches, each once (`processed_events`, checked by the subscriber) in
the same transaction as its effect; every report says how fresh it is (`freshness`).
"""

from __future__ import annotations

from typing import Any

from nameko.rpc import RpcProxy

from services.common.db import Database
from services.common.entrypoints import rpc
from services.common.health import HealthRpc
from services.common.metrics import ServiceMetrics
from services.common.scope import Scope
from services.common.subscriber import EventBacklog, ReceivedEvent, cloud_event_handler
from services.common.validation import load
from services.reporting import bulletin, exports, freshness, names, projection, reports, rule_admin, schemas
from services.reporting.models import processed_events

ACCOUNTS_EVENTS = [
    "teacher.joined", "teacher.changed", "teacher.left", "school.created", "district.created",
    "group.created", "alliance.created", "school.joined_alliance",
]
ACTIVITY_EVENTS = ["activity.recorded.*", "activity.corrected.*", "activity.hidden.*"]
EVENT_BATCH = 500


class ReportingService(HealthRpc):
    name = "reporting"

    db = Database("reporting")
    metrics = ServiceMetrics("reporting")
    backlog = EventBacklog()  # events still waiting for the handlers below (reports' freshness)
    accounts = RpcProxy("accounts")  # teachers' names only (events carry none); always via names.rpc_lookup

    def _names(self, caller: Scope) -> names.NameLookup:
        """Asked after the read transaction ends: a slow accounts never holds a database snapshot open."""
        return names.rpc_lookup(self.accounts, caller.to_dict())

    # --- reports -----------------------------------------------------------------------------------

    @rpc
    def teacher_progress(self, scope: dict, teacher_id: int, period: dict) -> dict[str, Any]:
        pending = self.backlog()  # counted before the snapshot (see freshness.describe)
        with self.db.begin():  # one consistent snapshot; ends the read transaction
            progress = reports.teacher_progress(self.db, Scope.from_dict(scope), int(teacher_id), period)
            progress["freshness"] = freshness.describe(self.db, pending)
            return progress

    @rpc
    def school_compliance(self, scope: dict, school_id: int, period: dict) -> dict[str, Any]:
        caller = Scope.from_dict(scope)
        pending = self.backlog()  # counted before the snapshot (see freshness.describe)
        with self.db.begin():  # one consistent snapshot; ends the read transaction
            report = reports.school_compliance(self.db, caller, int(school_id), period)
            report["freshness"] = freshness.describe(self.db, pending)
        return names.name_lines(report, ["teacher_results"], self._names(caller))

    @rpc
    def get_bulletin(self, scope: dict, period: dict) -> dict[str, Any]:
        caller = Scope.from_dict(scope)
        values = load(schemas.PeriodIn(), period)
        pending = self.backlog()  # counted before the snapshot (see freshness.describe)
        with self.db.begin():  # one consistent snapshot; ends the read transaction
            report = reports.bulletin_in_scope(self.db, caller, values)
            report["freshness"] = freshness.describe(self.db, pending)
        return names.name_lines(report, bulletin.TEACHER_SECTIONS, self._names(caller))

    @rpc
    def export_bulletin(self, scope: dict, request: dict) -> dict[str, Any]:
        """A download (see `exports.download`)."""
        caller = Scope.from_dict(scope)
        values = load(schemas.ExportIn(), request)
        pending = self.backlog()  # counted before the snapshot (see freshness.describe)
        with self.db.begin():  # one consistent snapshot; ends the read transaction
            report = reports.bulletin_in_scope(self.db, caller, values)
            report["freshness"] = freshness.describe(self.db, pending)
        names.name_lines(report, bulletin.TEACHER_SECTIONS, self._names(caller))
        return exports.download(report, values)

    # --- rules -------------------------------------------------------------------------------------

    @rpc
    def get_rules(self, scope: dict, target: dict | None = None) -> dict[str, Any]:
        with self.db.begin():  # one consistent snapshot; ends the read transaction
            return rule_admin.rules_in_force(self.db, Scope.from_dict(scope), target)

    @rpc
    def put_rules(self, scope: dict, body: dict, target: dict | None = None) -> dict[str, Any]:
        """Store a new version; tallies are rebuilt when the calendar (zone, terms) changed."""
        caller = Scope.from_dict(scope)
        checked = rule_admin.check_may_replace(caller, target)
        with self.db.begin():
            return rule_admin.replace_rules(self.db, caller, body, checked)

    # --- events ------------------------------------------------------------------------------------

    # Batches: many events per transaction, acknowledged after it commits (`cloud_event_handler`).

    @cloud_event_handler("accounts", ACCOUNTS_EVENTS, processed=processed_events, batch=EVENT_BATCH)
    def on_accounts_event(self, events: list[ReceivedEvent]) -> None:
        projection.apply_events(self.db, "accounts", events)

    @cloud_event_handler("activities", ACTIVITY_EVENTS, processed=processed_events, batch=EVENT_BATCH)
    def on_activity_event(self, events: list[ReceivedEvent]) -> None:
        projection.apply_events(self.db, "activities", events)
