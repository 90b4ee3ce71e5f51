"""xAPI: every activity as a statement, and the `/xapi/statements` query over them.

Statements are built from the stored record (never stored twice), so the body of an event and the
answer of a query are the same statement. IRIs are stable: subscribers and learning-record tools
filter on them.

- actor: an Agent identified by account {homePage: HOME_PAGE, name: "teacher/<id>"} (names stay in
  accounts); verb: the kind's IRI; object: `<HOME_PAGE>/xapi/activities/<uuid>` (a comment's object is
  the activity it comments on); result.duration: ISO 8601; result.extensions: credited hours;
  context.extensions: bureau, district, school, group, kind; timestamp: when it happened; stored: when
  it was recorded; context.statement: the statement a correction replaces.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from services.activities.exceptions import InvalidInput, NotFound
from services.activities.models import Activity
from services.activities.schemas import KINDS, MAX_STATEMENTS, XAPI_VERSION, StatementQuery
from services.common.scope import Scope
from services.common.timeutil import as_utc
from services.common.validation import load

HOME_PAGE = "https://lianxiao.example"
ACTIVITY_BASE = f"{HOME_PAGE}/xapi/activities/"
ACTIVITY_TYPE_BASE = f"{HOME_PAGE}/xapi/activity-types/"
EXTENSION_BASE = f"{HOME_PAGE}/xapi/extensions/"
HID_VERB = f"{HOME_PAGE}/xapi/verbs/hid"
MAX_SEQUENCE = 2**63 - 1
MAX_CURSOR_DIGITS = len(str(MAX_SEQUENCE))


def extension(name: str) -> str:
    return EXTENSION_BASE + name


def iso(moment: datetime) -> str:
    return as_utc(moment).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_duration(minutes: int) -> str:
    if minutes <= 0:
        return "PT0S"
    hours, rest = divmod(minutes, 60)
    return "PT" + (f"{hours}H" if hours else "") + (f"{rest}M" if rest else "")


def agent(teacher_id: int) -> dict[str, Any]:
    return {"objectType": "Agent", "account": {"homePage": HOME_PAGE, "name": f"teacher/{teacher_id}"}}


def context_extensions(activity: Activity | SimpleNamespace) -> dict[str, Any]:
    return {
        extension("bureau"): activity.bureau_id,
        extension("district"): activity.district_id,
        extension("school"): activity.school_id,
        extension("group"): activity.group_id,
        extension("kind"): activity.kind,
    }


def statement(activity: Activity | SimpleNamespace) -> dict[str, Any]:
    """The xAPI statement of one stored activity (or of a batch's row about to be inserted)."""
    kind = KINDS[activity.kind]
    details = json.loads(activity.details)
    result: dict[str, Any] = {
        "duration": iso_duration(activity.duration_minutes),
        "extensions": {
            extension("online-hours"): float(activity.online_hours),
            extension("offline-hours"): float(activity.offline_hours),
        },
    }
    context: dict[str, Any] = {
        "platform": "lianxiao",
        "language": "zh-CN",
        "extensions": context_extensions(activity),
    }
    if activity.corrects_id:
        context["statement"] = {"objectType": "StatementRef", "id": activity.corrects_id}
    return {
        "id": activity.id,
        "actor": agent(activity.teacher_id),
        "verb": {"id": kind.verb, "display": {"zh-CN": kind.label, "en-US": activity.kind.replace("_", " ")}},
        "object": {
            "objectType": "Activity",
            "id": ACTIVITY_BASE + activity.object_id,
            "definition": {
                "type": ACTIVITY_TYPE_BASE + activity.kind,
                "name": {"zh-CN": kind.label},
                "extensions": {extension("details"): details},
            },
        },
        "result": result,
        "context": context,
        "timestamp": iso(activity.occurred_at),
        "stored": iso(activity.recorded_at),
        "version": XAPI_VERSION,
    }


def hide_statement(activity: Activity) -> dict[str, Any]:
    """A moderator hid a statement: who, why, which (the hidden one stays stored)."""
    assert activity.hidden_at is not None and activity.hidden_by_teacher_id is not None
    return {
        "id": activity.hidden_statement_id,
        "actor": agent(activity.hidden_by_teacher_id),
        "verb": {"id": HID_VERB, "display": {"zh-CN": "屏蔽", "en-US": "hid"}},
        "object": {"objectType": "StatementRef", "id": activity.id},
        "result": {"response": activity.hidden_reason},
        "context": {"platform": "lianxiao", "language": "zh-CN", "extensions": context_extensions(activity)},
        "timestamp": iso(activity.hidden_at),
        "stored": iso(activity.hidden_at),
        "version": XAPI_VERSION,
    }


# --- GET /xapi/statements -------------------------------------------------------------------------


def _teacher_of_agent(value: Any) -> int | None:
    """The teacher id an xAPI agent filter names; None when it names nobody known here."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise InvalidInput("agent must be a JSON Agent object.", {"agent": ["Not JSON."]}) from error
    if not isinstance(value, dict):
        raise InvalidInput("agent must be a JSON Agent object.", {"agent": ["Not an object."]})
    account = value.get("account")
    if not isinstance(account, dict) or account.get("homePage") != HOME_PAGE:
        return None
    prefix, _, number = str(account.get("name", "")).partition("/")
    return int(number) if prefix == "teacher" and number.isdigit() else None


def encode_cursor(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"s{sequence}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("s") or not 1 <= len(text) <= MAX_CURSOR_DIGITS + 1:
            raise ValueError(text)
        sequence = int(text[1:])
        if not 0 <= sequence <= MAX_SEQUENCE:  # beyond the database's 64-bit sequence
            raise ValueError(text)
        return sequence
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise InvalidInput("The cursor is not one this server gave out.", {"cursor": ["Invalid."]}) from error


def in_scope(query: Any, scope: Scope) -> Any:
    query = query.where(Activity.bureau_id == scope.bureau_id)
    if scope.kind == "district":
        return query.where(Activity.district_id == scope.id)
    if scope.kind == "school":
        return query.where(Activity.school_id == scope.id)
    return query


def query_statements(session: Session, scope: Scope, params: dict[str, Any]) -> dict[str, Any]:
    """xAPI StatementResult: `statements` and `more` (a relative URL of the next page, or "")."""
    values = load(StatementQuery(), {key: value for key, value in params.items() if value is not None})
    if values["statementId"] is not None:
        query = in_scope(select(Activity).where(Activity.id == str(values["statementId"])), scope)
        found = session.scalar(query.where(Activity.hidden.is_(False)))
        if found is None:
            raise NotFound(f"No statement {values['statementId']} in this scope.")
        return {"statements": [statement(found)], "more": ""}

    query = in_scope(select(Activity), scope).where(Activity.hidden.is_(False))  # hidden ≈ voided
    if values["agent"] is not None:
        teacher_id = _teacher_of_agent(values["agent"])
        if teacher_id is None:
            return {"statements": [], "more": ""}
        query = query.where(Activity.teacher_id == teacher_id)
    if values["verb"]:
        kinds = [name for name, kind in KINDS.items() if kind.verb == values["verb"]]
        if not kinds:
            return {"statements": [], "more": ""}
        query = query.where(Activity.kind.in_(kinds))
    if values["activity"]:
        if not values["activity"].startswith(ACTIVITY_BASE):
            return {"statements": [], "more": ""}
        object_id = values["activity"][len(ACTIVITY_BASE):]
        query = query.where(or_(Activity.object_id == object_id, Activity.id == object_id))
    if values["since"] is not None:
        query = query.where(Activity.recorded_at > values["since"].astimezone(UTC))  # xAPI: since is exclusive
    if values["until"] is not None:
        query = query.where(Activity.recorded_at <= values["until"].astimezone(UTC))
    ascending = values["ascending"]
    if values["cursor"]:
        after = decode_cursor(values["cursor"])
        query = query.where(Activity.sequence > after if ascending else Activity.sequence < after)
    # `stored` order is insertion order; the sequence breaks ties between equal timestamps.
    query = query.order_by(Activity.sequence.asc() if ascending else Activity.sequence.desc())
    limit = values["limit"] or MAX_STATEMENTS
    limit = min(limit, MAX_STATEMENTS)
    rows = list(session.scalars(query.limit(limit + 1)))
    more = ""
    if len(rows) > limit:
        rows = rows[:limit]
        next_params = {key: value for key, value in params.items() if value is not None and key != "cursor"}
        if isinstance(next_params.get("agent"), dict):
            next_params["agent"] = json.dumps(next_params["agent"], separators=(",", ":"))
        next_params["cursor"] = encode_cursor(rows[-1].sequence)
        more = "/xapi/statements?" + urlencode({key: str(value).lower() if isinstance(value, bool) else value
                                                for key, value in next_params.items()})
    return {"statements": [statement(row) for row in rows], "more": more}
