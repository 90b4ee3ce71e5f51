"""The reporting service: quota reports over RPC, read models kept from accounts' and activities' events.

Every RPC takes the caller's scope first: a school sees itself, a district its schools, the bureau
everything. Handlers apply each event once (`processed_events`) in the same transaction as its effect.
"""

from __future__ import annotations

import base64
from typing import Any

from nameko.rpc import RpcProxy
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.db import Database
from services.common.entrypoints import rpc
from services.common.health import HealthRpc
from services.common.metrics import ServiceMetrics
from services.common.scope import Scope
from services.common.subscriber import cloud_event_handler
from services.common.validation import load
from services.reporting import bulletin, compliance, exports, names, projection, rules, schemas
from services.reporting.exceptions import Forbidden, NotFound
from services.reporting.models import schools, teachers

ACCOUNTS_EVENTS = [
    "teacher.joined", "teacher.changed", "teacher.left", "school.created", "district.created",
    "group.created", "alliance.created", "school.joined_alliance",
]
ACTIVITY_EVENTS = ["activity.recorded.*", "activity.corrected.*", "activity.hidden.*"]
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def visible_school_ids(session: Session, scope: Scope) -> list[int] | None:
    """None: every school of the bureau; otherwise the ids the scope may see."""
    if scope.kind == "bureau":
        return None
    query = select(schools.c.id).where(schools.c.bureau_id == scope.bureau_id)
    column = schools.c.district_id if scope.kind == "district" else schools.c.id
    return list(session.scalars(query.where(column == scope.id)))


def require_school(session: Session, scope: Scope, school_id: int) -> None:
    row = session.execute(select(schools).where(schools.c.id == school_id)).mappings().first()
    if row is None:
        raise NotFound(f"No school {school_id} is known to reporting.")
    if not scope.covers_school(row["bureau_id"], row["district_id"], row["id"]):
        raise Forbidden(f"School {school_id} is outside the {scope.describe()} scope.")


def period_of(session: Session, bureau_id: int, data: Any) -> tuple[Any, Any]:
    """The period asked for, and the rule set in force when it ended."""
    values = load(schemas.PeriodIn(), data)
    calendar = rules.in_force(session, bureau_id).calendar
    period = calendar.month(values["key"]) if values["kind"] == "month" else calendar.term(values["key"])
    rule_set = rules.in_force(session, bureau_id, calendar.end_moment(period))
    period = (rule_set.calendar.month(values["key"]) if values["kind"] == "month"
              else rule_set.calendar.term(values["key"]))
    return period, rule_set


class ReportingService(HealthRpc):
    name = "reporting"

    db = Database("reporting")
    metrics = ServiceMetrics("reporting")
    accounts = RpcProxy("accounts")  # teachers' names only (events carry none); always via names.rpc_lookup

    def _names(self, caller: Scope) -> names.NameLookup:
        """Asked after the read transaction ends: a slow accounts never holds a database snapshot open."""
        return names.rpc_lookup(self.accounts, caller.to_dict())

    # --- reports -----------------------------------------------------------------------------------

    @rpc
    def teacher_progress(self, scope: dict, teacher_id: int, period: dict) -> dict[str, Any]:
        with self.db.begin():  # one consistent snapshot; ends the read transaction
            caller = Scope.from_dict(scope)
            row = self.db.execute(select(teachers).where(teachers.c.id == int(teacher_id))).mappings().first()
            if row is None:
                raise NotFound(f"No teacher {teacher_id} is known to reporting.")
            if not caller.covers_school(row["bureau_id"], row["district_id"], row["school_id"]):
                raise Forbidden(f"Teacher {teacher_id} is outside the {caller.describe()} scope.")
            when, rule_set = period_of(self.db, row["bureau_id"], period)
            evaluation = compliance.evaluate(self.db, row["bureau_id"], when, rule_set, [row["school_id"]])
            found = [t for t in evaluation.schools[row["school_id"]].teachers if t.teacher_id == row["id"]]
            if not found:
                raise NotFound(f"Teacher {teacher_id} has left; no progress is reported for them.")
            school = evaluation.schools[row["school_id"]]
            return {"period": compliance.period_out(when, evaluation.through), "rules_version": school.rules_version,
                    "rules_scope": school.rules_scope, **compliance.teacher_out(found[0])}

    @rpc
    def school_compliance(self, scope: dict, school_id: int, period: dict) -> dict[str, Any]:
        with self.db.begin():  # one consistent snapshot; ends the read transaction
            caller = Scope.from_dict(scope)
            require_school(self.db, caller, int(school_id))
            when, rule_set = period_of(self.db, caller.bureau_id, period)
            evaluation = compliance.evaluate(self.db, caller.bureau_id, when, rule_set, [int(school_id)])
            report = compliance.school_report(evaluation, int(school_id))
        return names.name_lines(report, ["teacher_results"], self._names(caller))

    @rpc
    def get_bulletin(self, scope: dict, period: dict) -> dict[str, Any]:
        with self.db.begin():  # one consistent snapshot; ends the read transaction
            caller = Scope.from_dict(scope)
            values = load(schemas.PeriodIn(), period)
            report = bulletin.build(self.db, caller.bureau_id, values["kind"], values["key"],
                                    visible_school_ids(self.db, caller))
        return names.name_lines(report, bulletin.TEACHER_SECTIONS, self._names(caller))

    @rpc
    def export_bulletin(self, scope: dict, request: dict) -> dict[str, Any]:
        """A download: `{"filename", "display_filename", "content_type", "content_base64"}` (RPC bodies are
        JSON); `display_filename` is the Chinese title a person sees when saving it."""
        with self.db.begin():  # one consistent snapshot; ends the read transaction
            caller = Scope.from_dict(scope)
            values = load(schemas.ExportIn(), request)
            report = bulletin.build(self.db, caller.bureau_id, values["kind"], values["key"],
                                    visible_school_ids(self.db, caller))
        names.name_lines(report, bulletin.TEACHER_SECTIONS, self._names(caller))
        if values["format"] == "csv":
            content, content_type = exports.to_csv(report, values["section"]), "text/csv; charset=utf-8"
            filename = f"bulletin-{values['key']}-{values['section']}.csv"
            display = f"{report['title']}-{exports.section_title(values['section'])}.csv"
        else:
            content, content_type, filename = exports.to_xlsx(report), XLSX_TYPE, f"bulletin-{values['key']}.xlsx"
            display = f"{report['title']}.xlsx"
        return {"filename": filename, "display_filename": display, "content_type": content_type,
                "content_base64": base64.b64encode(content).decode("ascii")}

    # --- rules -------------------------------------------------------------------------------------

    @rpc
    def get_rules(self, scope: dict, target: dict | None = None) -> dict[str, Any]:
        with self.db.begin():  # one consistent snapshot; ends the read transaction
            caller = Scope.from_dict(scope)
            values = load(schemas.RuleSetTarget(), target or {})
            found = rules.in_force(self.db, caller.bureau_id, None, values["scope_kind"], values["scope_id"])
            return {"bureau_id": caller.bureau_id, **rules.describe(found)}

    @rpc
    def put_rules(self, scope: dict, body: dict, target: dict | None = None) -> dict[str, Any]:
        """Store a new version; tallies are rebuilt when the calendar (zone, terms) changed."""
        caller = Scope.from_dict(scope)
        caller.require_write()
        if caller.kind != "bureau":
            raise Forbidden("Quota rules are set by the bureau.")
        values = load(schemas.RuleSetTarget(), target or {})
        with self.db.begin():
            before = rules.in_force(self.db, caller.bureau_id).calendar
            saved = rules.save(self.db, caller.bureau_id, body, values["scope_kind"], values["scope_id"])
            after = rules.in_force(self.db, caller.bureau_id).calendar
            if (before.timezone_name, before.terms) != (after.timezone_name, after.terms):
                projection.rebuild_tallies(self.db)
        return saved

    # --- events ------------------------------------------------------------------------------------

    @cloud_event_handler("accounts", ACCOUNTS_EVENTS)
    def on_accounts_event(self, body: dict, attributes: dict) -> None:
        with self.db.begin():
            projection.apply_event(self.db, attributes["routing_key"], body, attributes)

    @cloud_event_handler("activities", ACTIVITY_EVENTS)
    def on_activity_event(self, body: dict, attributes: dict) -> None:
        with self.db.begin():
            projection.apply_event(self.db, attributes["routing_key"], body, attributes)
