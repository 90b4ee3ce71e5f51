"""Moderation: a blog host or moderator hides a comment (or post) with a reason. Nothing is deleted.

The record stays, marked hidden with who and why; an `activity.hidden.<kind>` event carries xAPI's
voiding statement (verb `http://adlnet.gov/expapi/verbs/voided`, object a StatementRef to the hidden
one, the reason in result.response) so subscribers and LRS readers stop showing or counting it.
Hiding twice returns the first hiding.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from services.activities import log, roster, schemas, xapi
from services.activities.exceptions import Forbidden, InvalidInput
from services.activities.models import outbox
from services.common.scope import Scope
from services.common.validation import load


def hide(session: Session, scope: Scope, activity_id: str, data: Any) -> dict[str, Any]:
    values = load(schemas.HideIn(), data)
    scope.require_write()
    activity = log.find_in_scope(session, scope, activity_id)
    if activity.kind not in schemas.HIDEABLE_KINDS:
        raise InvalidInput(
            f"Only {', '.join(schemas.HIDEABLE_KINDS)} can be hidden; this is a {activity.kind}. "
            "Correct other activities with a new record that `corrects` it.",
            {"id": ["Not a comment or blog post."]},
        )
    moderator = roster.teacher_in_scope(session, scope, values["moderator_id"])
    if not set(roster.roles_of(moderator)) & set(schemas.MODERATOR_ROLES):
        raise Forbidden(
            f"Teacher {moderator.id} is not a blog host, moderator or group leader.",
            {"moderator_id": ["Not a moderator."]},
        )
    if activity.hidden:
        return log.activity_out(activity)
    activity.hidden = True
    activity.hidden_at = datetime.now(UTC)
    activity.hidden_by_teacher_id = moderator.id
    activity.hidden_reason = values["reason"]
    activity.hidden_statement_id = str(uuid.uuid4())
    session.flush()
    outbox.add(
        session, f"activity.hidden.{activity.kind}", xapi.hide_statement(activity),
        bureau_id=activity.bureau_id, subject=f"activity/{activity.id}", event_id=activity.hidden_statement_id,
        time=activity.hidden_at,
    )
    return log.activity_out(activity)
