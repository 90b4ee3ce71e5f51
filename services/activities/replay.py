"""Replay: re-publish activities' events since a time to one subscriber's queue.

For a bureau that subscribed late or lost its queue. Events come from the outbox (which keeps every
published event), go through the default exchange straight to the named queue (nobody else sees them
again), keep their original CloudEvents headers and ids (so the subscriber's deduplication drops what
it already had), and are sent in their original order with publisher confirms. Only the routing keys
matching the subscriber's binding patterns (`*` one word, `#` any words) are replayed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from marshmallow import fields, validate
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.activities.exceptions import Forbidden
from services.activities.models import outbox
from services.activities.schemas import StrictSchema
from services.common.events import cloud_event_headers
from services.common.scope import Scope
from services.common.validation import load

MAX_REPLAY = 10_000
QUEUE_NAME = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$", error="Not a queue name.")
PATTERN = validate.Regexp(r"^(\*|#|[a-z0-9_]+)(\.(\*|#|[a-z0-9_]+))*$", error="Not a topic binding pattern.")


class ReplayIn(StrictSchema):
    queue = fields.String(required=True, validate=QUEUE_NAME)
    since = fields.AwareDateTime(required=True)
    routing_keys = fields.List(fields.String(validate=PATTERN), load_default=lambda: ["#"],
                               validate=validate.Length(min=1, max=50))
    limit = fields.Integer(load_default=MAX_REPLAY, validate=validate.Range(min=1, max=MAX_REPLAY))


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: `*` is exactly one word, `#` zero or more words."""
    return _match(pattern.split("."), routing_key.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[skip:]) for skip in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _match(rest, words[1:])


Publish = Callable[[str, bytes, Mapping[str, Any], Mapping[str, Any]], None]


def replay(session: Session, scope: Scope, data: Any, publish: Publish) -> dict[str, Any]:
    """Publish matching events with `time >= since` to `queue`; returns how many and where it stopped.

    `publish(queue, body, headers, properties)` must confirm each message (raise if not).
    """
    values = load(ReplayIn(), data)
    if scope.kind != "bureau":
        raise Forbidden("Only a bureau token may replay the event stream.")
    scope.require_write()
    table = outbox.table
    rows = session.execute(
        select(table)
        .where(table.c.time >= values["since"].astimezone(UTC), table.c.published_at.is_not(None))
        .order_by(table.c.sequence)
    ).mappings()
    republished = 0
    last_time: datetime | None = None
    for row in rows:
        if not any(topic_matches(pattern, row["routing_key"]) for pattern in values["routing_keys"]):
            continue
        if republished >= values["limit"]:
            break
        publish(values["queue"], row["body"].encode(), cloud_event_headers(row), {
            "message_id": row["event_id"], "type": row["type"], "routing_key": row["routing_key"],
        })
        republished += 1
        last_time = row["time"]
    return {
        "queue": values["queue"],
        "republished": republished,
        "complete": republished < values["limit"],
        "last_event_time": last_time.isoformat() if last_time else None,
    }
