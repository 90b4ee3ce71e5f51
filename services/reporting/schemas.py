"""What the reporting RPC accepts: a period, an export request, a rule set's target."""

from __future__ import annotations

import re

from marshmallow import ValidationError, fields, validate, validates_schema

from services.common.validation import ID, StrictSchema
from services.reporting.exports import SECTION_KEYS

MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
# A period in a query string: `month:2025-03` or `term:<term code>`.
PERIOD_TEXT = re.compile(r"^(month:\d{4}-(0[1-9]|1[0-2])|term:[^\s]{1,40})$")


class PeriodIn(StrictSchema):
    """`{"kind": "month", "key": "2025-03"}` or `{"kind": "term", "key": "<term code>"}`."""

    kind = fields.String(load_default="month", validate=validate.OneOf(("month", "term")))
    key = fields.String(required=True, validate=validate.Length(min=1, max=40))

    @validates_schema
    def month_is_written_yyyy_mm(self, data: dict, **_kwargs: object) -> None:
        if data.get("kind", "month") == "month" and not MONTH.match(data.get("key", "")):
            raise ValidationError("A month is written YYYY-MM.", "key")


class ExportIn(PeriodIn):
    format = fields.String(required=True, validate=validate.OneOf(("csv", "xlsx")))
    section = fields.String(load_default="schools", validate=validate.OneOf(SECTION_KEYS))


class RuleSetTarget(StrictSchema):
    scope_kind = fields.String(load_default="bureau", validate=validate.OneOf(("bureau", "district", "alliance")))
    scope_id = fields.Integer(load_default=None, allow_none=True, strict=True)


class PeriodQuery(StrictSchema):
    """`?period=month:2025-03` or `?period=term:<term code>` (HTTP); `period_of_query` turns it into PeriodIn."""

    period = fields.String(required=True, validate=validate.Regexp(
        PERIOD_TEXT, error="Write month:YYYY-MM or term:<term code>."))


def period_of_query(text: str) -> dict[str, str]:
    kind, _, key = text.partition(":")
    return {"kind": kind, "key": key}


class BulletinPath(StrictSchema):
    """The bulletin's period as it appears in `/v1/bulletins/{kind}/{key}`."""

    kind = fields.String(required=True, validate=validate.OneOf(("month", "term")))
    key = fields.String(required=True, validate=validate.Length(min=1, max=40))


class CsvSectionQuery(StrictSchema):
    section = fields.String(load_default="schools", validate=validate.OneOf(SECTION_KEYS))


class RuleSetQuery(StrictSchema):
    """RuleSetTarget in a query string (where every value arrives as text)."""

    scope_kind = fields.String(load_default="bureau", validate=validate.OneOf(("bureau", "district", "alliance")))
    scope_id = fields.Integer(load_default=None, validate=ID)
