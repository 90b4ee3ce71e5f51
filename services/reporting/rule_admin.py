"""Rule sets over RPC: read the one in force for a target, store a new version."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from services.common.scope import Scope
from services.common.validation import load
from services.reporting import projection, rules, schemas
from services.reporting.exceptions import Forbidden


def rules_in_force(session: Session, caller: Scope, target: dict[str, Any] | None) -> dict[str, Any]:
    values = load(schemas.RuleSetTarget(), target or {})
    found = rules.in_force(session, caller.bureau_id, None, values["scope_kind"], values["scope_id"])
    return {"bureau_id": caller.bureau_id, **rules.describe(found)}


def check_may_replace(caller: Scope, target: dict[str, Any] | None) -> dict[str, Any]:
    """The loaded target, if the caller may set rules (the bureau, with write access)."""
    caller.require_write()
    if caller.kind != "bureau":
        raise Forbidden("Quota rules are set by the bureau.")
    return load(schemas.RuleSetTarget(), target or {})


def replace_rules(session: Session, caller: Scope, body: Any, target: dict[str, Any]) -> dict[str, Any]:
    """Store a new version for a checked target; tallies are rebuilt when the calendar (zone, terms) changed."""
    before = rules.in_force(session, caller.bureau_id).calendar
    saved = rules.save(session, caller.bureau_id, body, target["scope_kind"], target["scope_id"])
    after = rules.in_force(session, caller.bureau_id).calendar
    if (before.timezone_name, before.terms) != (after.timezone_name, after.terms):
        projection.rebuild_tallies(session)
    return saved
