"""The replay request (services/common/replay.py): what the gateway validates before asking the services."""

from __future__ import annotations

from marshmallow import fields, validate

from services.common.validation import StrictSchema

MAX_REPLAY = 10_000
DEFAULT_REPLAY = 1_000
QUEUE_NAME = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$", error="Not a queue name.")


class ReplayIn(StrictSchema):
    queue = fields.String(required=True, validate=QUEUE_NAME)
    since = fields.AwareDateTime(required=True)
    limit = fields.Integer(load_default=DEFAULT_REPLAY, validate=validate.Range(min=1, max=MAX_REPLAY))
