"""xAPI: every activity as a statement, voiding statements for what no longer counts, output formats.

Statements are built from the stored record (never stored twice), so the body of an event and the
answer of a query are the same statement. IRIs are stable: subscribers and learning-record tools
filter on them.

- actor: an Agent identified by account {homePage: HOME_PAGE, name: "teacher/<id>"} (names stay in
  accounts); verb: the kind's IRI; object: `<HOME_PAGE>/xapi/activities/<uuid>` (a comment's object is
  the activity it comments on); result.duration: ISO 8601; result.extensions: the recorded time as
  online and offline hours (what it credits is the bureau's rule set: reporting's `GET /v1/rules`);
  context.extensions: bureau, district, school, group, kind; timestamp: when it happened; stored: when
  it was recorded; context.statement: the statement a correction replaces.
- What no longer counts is voided the xAPI way (verb `http://adlnet.gov/expapi/verbs/voided`, object a
  StatementRef): a moderator's hiding (the `activity.hidden.<kind>` event carries that statement, with
  the reason in result.response), and a correction's original (voided by a statement stored with the
  correction). The query over all of them is `statement_query.py`.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from services.activities.exceptions import InvalidInput
from services.activities.models import Activity
from services.activities.schemas import KINDS, XAPI_VERSION
from services.common.scope import Scope
from services.common.timeutil import as_utc

HOME_PAGE = "https://lianxiao.example"
ACTIVITY_BASE = f"{HOME_PAGE}/xapi/activities/"
ACTIVITY_TYPE_BASE = f"{HOME_PAGE}/xapi/activity-types/"
EXTENSION_BASE = f"{HOME_PAGE}/xapi/extensions/"
VOIDED_VERB = "http://adlnet.gov/expapi/verbs/voided"
# A correction's voiding statement has the correction's id with these bits flipped (version and
# variant bits untouched), so the id is stable, unique and leads back to the correction.
CORRECTION_VOIDING_MASK = 0x5A5A5A5A_5A5A_0A5A_1A5A_5A5A5A5A5A5A
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


def voiding(statement_id: str, voided_id: str, actor_teacher_id: int, moment: datetime,
            activity: Activity) -> dict[str, Any]:
    """An xAPI voiding statement: `voided_id` no longer counts (xAPI 1.0.3, "Voided")."""
    return {
        "id": statement_id,
        "actor": agent(actor_teacher_id),
        "verb": {"id": VOIDED_VERB, "display": {"zh-CN": "作废", "en-US": "voided"}},
        "object": {"objectType": "StatementRef", "id": voided_id},
        # No platform or language: xAPI allows them only when the object is an Activity.
        "context": {"extensions": context_extensions(activity)},
        "timestamp": iso(moment),
        "stored": iso(moment),
        "version": XAPI_VERSION,
    }


def hide_statement(activity: Activity) -> dict[str, Any]:
    """A moderator hid a statement: it is voided, with the moderator as actor and the reason."""
    assert activity.hidden_at is not None and activity.hidden_by_teacher_id is not None
    assert activity.hidden_statement_id is not None
    hidden = voiding(activity.hidden_statement_id, activity.id, activity.hidden_by_teacher_id,
                     activity.hidden_at, activity)
    hidden["verb"]["display"]["zh-CN"] = "屏蔽"
    hidden["result"] = {"response": activity.hidden_reason}
    return hidden


def correction_voiding_id(correction_id: str) -> str:
    return str(uuid.UUID(int=uuid.UUID(correction_id).int ^ CORRECTION_VOIDING_MASK))


def correction_of_voiding_id(statement_id: str) -> str:
    return correction_voiding_id(statement_id)  # the mask is its own inverse


def correction_voiding_statement(correction: Activity) -> dict[str, Any]:
    """A correction voids the statement it replaces; `context.statement` names the replacement."""
    assert correction.corrects_id is not None
    voided = voiding(correction_voiding_id(correction.id), correction.corrects_id, correction.teacher_id,
                     correction.recorded_at, correction)
    voided["context"]["statement"] = {"objectType": "StatementRef", "id": correction.id}
    return voided


# --- output formats (xAPI `format`) --------------------------------------------------------------


def pick_language(language_map: dict[str, str], languages: list[str]) -> dict[str, str]:
    """`canonical`: one entry of a language map, the caller's first acceptable language if present."""
    for wanted in languages:
        for tag, text in language_map.items():
            if tag.lower() == wanted.lower() or tag.lower().split("-")[0] == wanted.lower():
                return {tag: text}
    first = next(iter(language_map.items()), None)
    return dict([first]) if first else {}


def formatted(statement: dict[str, Any], form: str, languages: list[str]) -> dict[str, Any]:
    """`exact` as stored; `ids`: agents, verbs and activities by their identifiers only;
    `canonical`: one language per language map."""
    if form == "exact":
        return statement
    out = json.loads(json.dumps(statement))
    if form == "ids":
        out["actor"] = {key: value for key, value in out["actor"].items() if key in ("objectType", "account")}
        out["verb"] = {"id": out["verb"]["id"]}
        if out["object"].get("objectType") == "Activity":
            out["object"] = {"objectType": "Activity", "id": out["object"]["id"]}
        return out
    out["verb"]["display"] = pick_language(out["verb"].get("display", {}), languages)
    definition = out["object"].get("definition")
    if definition and "name" in definition:
        definition["name"] = pick_language(definition["name"], languages)
    return out


# --- cursors and scope ------------------------------------------------------------------------------


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


def in_scope(query: Any, scope: Scope, table: Any = Activity) -> Any:
    query = query.where(table.bureau_id == scope.bureau_id)
    if scope.kind == "district":
        return query.where(table.district_id == scope.id)
    if scope.kind == "school":
        return query.where(table.school_id == scope.id)
    return query
