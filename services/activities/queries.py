"""Reading the log: by teacher, school, group, kind and time range, in pages with a stable cursor.

The log is read in recording order (its sequence): a cursor names the last row seen, so pages never
skip or repeat a row even while new activities arrive. Hidden and superseded records are included
and marked (`include_hidden=false` leaves hidden ones out): nothing disappears silently.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.activities import log, schemas, xapi
from services.activities.models import Activity
from services.common.scope import Scope
from services.common.validation import load


def list_activities(session: Session, scope: Scope, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """{"items": [...], "next_cursor": str | None}."""
    values = load(schemas.ActivityQuery(), {key: value for key, value in (params or {}).items() if value is not None})
    query = xapi.in_scope(select(Activity), scope)
    for name in ("teacher_id", "school_id", "group_id", "kind"):
        if values[name] is not None:
            query = query.where(getattr(Activity, name) == values[name])
    if values["since"] is not None:
        query = query.where(Activity.occurred_at >= values["since"].astimezone(UTC))
    if values["until"] is not None:
        query = query.where(Activity.occurred_at < values["until"].astimezone(UTC))
    if not values["include_hidden"]:
        query = query.where(Activity.hidden.is_(False))
    if values["cursor"]:
        query = query.where(Activity.sequence > xapi.decode_cursor(values["cursor"]))
    rows = list(session.scalars(query.order_by(Activity.sequence).limit(values["limit"] + 1)))
    next_cursor = None
    if len(rows) > values["limit"]:
        rows = rows[: values["limit"]]
        next_cursor = xapi.encode_cursor(rows[-1].sequence)
    return {"items": [log.activity_out(row) for row in rows], "next_cursor": next_cursor}
