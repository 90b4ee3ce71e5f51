"""The reports the RPC serves, in the caller's scope: a teacher's progress, a school's compliance, the
bulletin. Each runs inside the caller's read transaction; naming teachers (an RPC to accounts) is left to
the service, after the transaction ends.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.scope import Scope
from services.common.validation import load
from services.reporting import bulletin, compliance, schemas, views
from services.reporting.exceptions import Forbidden, NotFound
from services.reporting.models import schools, teachers
from services.reporting.periods import Period
from services.reporting.rules import RuleSet, period_and_rules


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


def period_of(session: Session, bureau_id: int, data: Any) -> tuple[Period, RuleSet]:
    """The period asked for, and the rule set in force when it ended."""
    values = load(schemas.PeriodIn(), data)
    return period_and_rules(session, bureau_id, values["kind"], values["key"])


def teacher_progress(session: Session, caller: Scope, teacher_id: int, period: Any) -> dict[str, Any]:
    row = session.execute(select(teachers).where(teachers.c.id == teacher_id)).mappings().first()
    if row is None:
        raise NotFound(f"No teacher {teacher_id} is known to reporting.")
    if not caller.covers_school(row["bureau_id"], row["district_id"], row["school_id"]):
        raise Forbidden(f"Teacher {teacher_id} is outside the {caller.describe()} scope.")
    when, rule_set = period_of(session, row["bureau_id"], period)
    evaluation = compliance.evaluate(session, row["bureau_id"], when, rule_set, [row["school_id"]])
    school = evaluation.schools[row["school_id"]]
    found = [result for result in school.teachers if result.teacher_id == row["id"]]
    if not found:
        raise NotFound(f"Teacher {teacher_id} has left; no progress is reported for them.")
    return {"period": views.period_out(when, evaluation.through), "rules_version": school.rules_version,
            "rules_scope": school.rules_scope, **views.teacher_out(found[0])}


def school_compliance(session: Session, caller: Scope, school_id: int, period: Any) -> dict[str, Any]:
    """Every teacher's result in one school (lines not yet named)."""
    require_school(session, caller, school_id)
    when, rule_set = period_of(session, caller.bureau_id, period)
    evaluation = compliance.evaluate(session, caller.bureau_id, when, rule_set, [school_id])
    return views.school_report(evaluation, school_id)


def bulletin_in_scope(session: Session, caller: Scope, period: dict[str, str]) -> dict[str, Any]:
    """The bulletin of a loaded `PeriodIn` over the schools the caller sees (lines not yet named)."""
    return bulletin.build(session, caller.bureau_id, period["kind"], period["key"],
                          visible_school_ids(session, caller))
