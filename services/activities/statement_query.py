"""`GET /xapi/statements` as xAPI 1.0.3 says: one statement by id, or a filtered, paged StatementResult.

The statements an LRS tool sees are the log's statements that still count plus the voiding statements
(xapi.py) of those that no longer do, all in `stored` order:

- an activity's own statement, unless it was hidden or corrected (then it is voided: only
  `voidedStatementId` returns it);
- for each correction, a statement voiding the original, stored with the correction;
- for each hiding, the moderator's voiding statement, stored when it was hidden.

Filters follow the spec: `agent` is the actor, `verb` the verb, `activity` the object; a voiding
statement also matches when the statement it voids does (xAPI's rule for StatementRef objects). Our
statements have no context activities, other agents or registrations, so `related_activities` and
`related_agents` widen nothing and `registration` matches nothing. `since`/`until` compare `stored` at
the millisecond precision it is shown with (since exclusive, until inclusive).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, Integer, and_, false, literal, or_, select, union_all
from sqlalchemy.orm import Session, aliased

from services.activities import xapi
from services.activities.exceptions import InvalidInput, NotFound
from services.activities.models import Activity
from services.activities.schemas import KINDS, MAX_STATEMENTS, StatementQuery
from services.common.scope import Scope
from services.common.timeutil import as_utc, utcnow
from services.common.validation import load

# Statements become visible when their recording transaction commits, a little after their `stored`
# time. A recording transaction (a batch of 500 at most) commits within seconds; this margin is what
# X-Experience-API-Consistent-Through promises: every statement stored before it is already readable.
CONSISTENCY_MARGIN = timedelta(seconds=60)
MILLISECOND = timedelta(milliseconds=1)
SINGLE_STATEMENT_PARAMETERS = {"statementId", "voidedStatementId", "format", "attachments"}
ACTIVITY_STATEMENT, CORRECTION_VOIDING, HIDE_VOIDING = 0, 1, 2
PARTS = (ACTIVITY_STATEMENT, CORRECTION_VOIDING, HIDE_VOIDING)


def consistent_through() -> str:
    return xapi.iso(utcnow() - CONSISTENCY_MARGIN)


def query(session: Session, scope: Scope, params: dict[str, Any], languages: list[str] | None = None
          ) -> dict[str, Any]:
    """A single Statement (`statementId`/`voidedStatementId`) or a StatementResult {statements, more}."""
    given = {key: value for key, value in params.items() if value is not None}
    values = load(StatementQuery(), given)
    languages = languages or []
    if values["statementId"] is not None and values["voidedStatementId"] is not None:
        raise InvalidInput("Send statementId or voidedStatementId, not both.",
                           {"statementId": ["Not with voidedStatementId."]})
    if values["statementId"] is not None or values["voidedStatementId"] is not None:
        extra = sorted(set(given) - SINGLE_STATEMENT_PARAMETERS)
        if extra:
            raise InvalidInput(f"With statementId or voidedStatementId only format and attachments may be "
                               f"sent; not {', '.join(extra)}.", {name: ["Not allowed here."] for name in extra})
        if values["statementId"] is not None:
            found = one_statement(session, scope, str(values["statementId"]))
        else:
            found = voided_statement(session, scope, str(values["voidedStatementId"]))
        return xapi.formatted(found, values["format"], languages)
    page = statement_page(session, scope, values)
    more = ""
    if page.next_cursor:
        next_params = {key: value for key, value in given.items() if key != "cursor"}
        if isinstance(next_params.get("agent"), dict):
            next_params["agent"] = json.dumps(next_params["agent"], separators=(",", ":"))
        next_params["cursor"] = page.next_cursor
        more = "/xapi/statements?" + urlencode({key: str(value).lower() if isinstance(value, bool) else value
                                                for key, value in next_params.items()})
    return {"statements": [xapi.formatted(item, values["format"], languages) for item in page.statements],
            "more": more}


# --- one statement ----------------------------------------------------------------------------------


def _find(session: Session, scope: Scope, condition: ColumnElement[bool]) -> Activity | None:
    return session.scalar(xapi.in_scope(select(Activity).where(condition), scope))


def _voided(activity: Activity) -> bool:
    return bool(activity.hidden) or activity.superseded_by_id is not None


def one_statement(session: Session, scope: Scope, statement_id: str) -> dict[str, Any]:
    activity = _find(session, scope, Activity.id == statement_id)
    if activity is not None:
        if _voided(activity):
            raise NotFound(f"Statement {statement_id} was voided; ask with voidedStatementId.")
        return xapi.statement(activity)
    hidden = _find(session, scope, Activity.hidden_statement_id == statement_id)
    if hidden is not None and hidden.hidden:
        return xapi.hide_statement(hidden)
    correction = _find(session, scope, Activity.id == xapi.correction_of_voiding_id(statement_id))
    if correction is not None and correction.corrects_id is not None:
        return xapi.correction_voiding_statement(correction)
    raise NotFound(f"No statement {statement_id} in this scope.")


def voided_statement(session: Session, scope: Scope, statement_id: str) -> dict[str, Any]:
    activity = _find(session, scope, Activity.id == statement_id)
    if activity is None or not _voided(activity):
        raise NotFound(f"No voided statement {statement_id} in this scope.")
    return xapi.statement(activity)


# --- many statements ------------------------------------------------------------------------------


@dataclass
class Page:
    statements: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True)
class Position:
    """Where a statement stands in `stored` order (ties broken by the log's sequence, then the part)."""

    stored: datetime
    sequence: int
    part: int

    def encode(self) -> str:
        text = f"p{as_utc(self.stored).isoformat()}|{self.sequence}|{self.part}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> Position:
        try:
            text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            if not text.startswith("p"):
                raise ValueError(text)
            stored, sequence, part = text[1:].split("|")
            position = cls(as_utc(datetime.fromisoformat(stored)), int(sequence), int(part))
            # Beyond the database's 64-bit sequence or the parts there are: never one we gave out.
            if not 0 <= position.sequence <= xapi.MAX_SEQUENCE or position.part not in PARTS:
                raise ValueError(text)
            return position
        except (binascii.Error, UnicodeDecodeError, ValueError) as error:
            raise InvalidInput("The cursor is not one this server gave out.", {"cursor": ["Invalid."]}) from error


@dataclass
class Filters:
    teacher_id: int | None
    kinds: list[str] | None  # None: any verb
    voided_verb: bool  # the verb filter asks for voiding statements
    object_id: str | None


def _filters(values: dict[str, Any]) -> Filters | None:
    """The query's filters in our terms; None when they can match nothing here."""
    teacher_id = None
    if values["agent"] is not None:
        teacher_id = _teacher_of_agent(values["agent"])
        if teacher_id is None:
            return None
    kinds, voided_verb = None, False
    if values["verb"]:
        kinds = [name for name, kind in KINDS.items() if kind.verb == values["verb"]]
        voided_verb = values["verb"] == xapi.VOIDED_VERB
        if not kinds and not voided_verb:
            return None
    object_id = None
    if values["activity"]:
        if not values["activity"].startswith(xapi.ACTIVITY_BASE):
            return None
        object_id = values["activity"][len(xapi.ACTIVITY_BASE):]
    if values["registration"] is not None:
        return None  # no statement here has a registration
    return Filters(teacher_id, kinds, voided_verb, object_id)


def _teacher_of_agent(value: Any) -> int | None:
    """The teacher id an xAPI agent filter names; None when it names nobody known here."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise InvalidInput("agent must be a JSON Agent object.", {"agent": ["Not JSON."]}) from error
    if not isinstance(value, dict):
        raise InvalidInput("agent must be a JSON Agent object.", {"agent": ["Not an object."]})
    identifiers = [key for key in ("mbox", "mbox_sha1sum", "openid", "account") if key in value]
    if len(identifiers) != 1:
        raise InvalidInput("agent needs exactly one identifier (mbox, mbox_sha1sum, openid or account).",
                           {"agent": ["Exactly one inverse functional identifier."]})
    account = value.get("account")
    if not isinstance(account, dict) or account.get("homePage") != xapi.HOME_PAGE:
        return None
    prefix, _, number = str(account.get("name", "")).partition("/")
    return int(number) if prefix == "teacher" and number.isdigit() else None


def _statement_rows(scope: Scope, filters: Filters) -> Any:
    """(sequence, part, stored, activity id) of every statement that matches, as one union."""
    own = aliased(Activity)
    activity_statements = select(
        own.sequence.label("sequence"), literal(ACTIVITY_STATEMENT, Integer).label("part"),
        own.recorded_at.label("stored"), own.id.label("activity_id"),
    ).where(own.hidden.is_(False), own.superseded_by_id.is_(None))
    activity_statements = xapi.in_scope(activity_statements, scope, own)
    if filters.teacher_id is not None:
        activity_statements = activity_statements.where(own.teacher_id == filters.teacher_id)
    if filters.kinds is not None:
        activity_statements = activity_statements.where(own.kind.in_(filters.kinds) if filters.kinds else false())
    if filters.object_id is not None:
        activity_statements = activity_statements.where(own.object_id == filters.object_id)

    correction, original = aliased(Activity), aliased(Activity)
    corrections = select(
        correction.sequence, literal(CORRECTION_VOIDING, Integer), correction.recorded_at, correction.id,
    ).join(original, original.id == correction.corrects_id)
    corrections = xapi.in_scope(corrections, scope, correction)
    corrections = _voiding_filters(corrections, filters, original, correction.teacher_id == filters.teacher_id)

    hidden = aliased(Activity)
    hidings = select(hidden.sequence, literal(HIDE_VOIDING, Integer), hidden.hidden_at, hidden.id).where(
        hidden.hidden.is_(True))
    hidings = xapi.in_scope(hidings, scope, hidden)
    hidings = _voiding_filters(hidings, filters, hidden, hidden.hidden_by_teacher_id == filters.teacher_id)
    return union_all(activity_statements, corrections, hidings).subquery("statement_rows")


def _voiding_filters(query: Any, filters: Filters, voided: Any, own_actor: ColumnElement[bool]) -> Any:
    """A voiding statement matches on its own actor and verb, or on the statement it voids."""
    if filters.teacher_id is not None:
        query = query.where(or_(own_actor, voided.teacher_id == filters.teacher_id))
    if filters.kinds is not None and not filters.voided_verb:
        query = query.where(voided.kind.in_(filters.kinds) if filters.kinds else false())
    if filters.object_id is not None:
        query = query.where(voided.object_id == filters.object_id)
    return query


def _after(rows: Any, position: Position, ascending: bool) -> ColumnElement[bool]:
    """Strictly past `position` in the reading direction."""
    def beyond(column: Any, value: Any) -> ColumnElement[bool]:
        return column > value if ascending else column < value

    return or_(
        beyond(rows.c.stored, position.stored),
        and_(rows.c.stored == position.stored, beyond(rows.c.sequence, position.sequence)),
        and_(rows.c.stored == position.stored, rows.c.sequence == position.sequence,
             beyond(rows.c.part, position.part)),
    )


def _after_shown_millisecond(moment: datetime) -> datetime:
    """The first moment after `moment`'s millisecond (as `stored` is shown); the last one stays itself."""
    moment = as_utc(moment).astimezone(UTC)
    floored = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    return floored + MILLISECOND if floored <= datetime.max.replace(tzinfo=UTC) - MILLISECOND else moment


def statement_page(session: Session, scope: Scope, values: dict[str, Any]) -> Page:
    filters = _filters(values)
    if filters is None:
        return Page([], None)
    rows = _statement_rows(scope, filters)
    query = select(rows.c.sequence, rows.c.part, rows.c.stored, rows.c.activity_id)
    # `stored` is shown to the millisecond: compare what the client saw (since exclusive, until inclusive).
    if values["since"] is not None:
        query = query.where(rows.c.stored >= _after_shown_millisecond(values["since"]))
    if values["until"] is not None:
        query = query.where(rows.c.stored < _after_shown_millisecond(values["until"]))
    ascending = values["ascending"]
    if values["cursor"]:
        query = query.where(_after(rows, Position.decode(values["cursor"]), ascending))
    order = (rows.c.stored, rows.c.sequence, rows.c.part)
    query = query.order_by(*(column.asc() if ascending else column.desc() for column in order))
    limit = min(values["limit"] or MAX_STATEMENTS, MAX_STATEMENTS)
    found = session.execute(query.limit(limit + 1)).all()
    next_cursor = None
    if len(found) > limit:
        found = found[:limit]
        last = found[-1]
        next_cursor = Position(as_utc(last.stored), last.sequence, last.part).encode()
    activities = {activity.id: activity for activity in session.scalars(
        select(Activity).where(Activity.id.in_({row.activity_id for row in found})))}
    builders = {ACTIVITY_STATEMENT: xapi.statement, CORRECTION_VOIDING: xapi.correction_voiding_statement,
                HIDE_VOIDING: xapi.hide_statement}
    return Page([builders[row.part](activities[row.activity_id]) for row in found], next_cursor)
