"""Validating input with marshmallow and turning its messages into a typed error."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, validate

from services.common.errors import InvalidInput

NAME = validate.Length(min=1, max=200)
# Database ids are 32-bit integers; a larger number can only be a mistake (and must not reach the database,
# where it would be a driver error instead of a clear 422).
MAX_ID = 2**31 - 1
ID = validate.Range(min=1, max=MAX_ID)


class StrictSchema(Schema):
    """Input schemas refuse unknown fields, naming them."""

    class Meta:
        unknown = RAISE


def load(schema: Schema, data: Any, *, partial: bool = False) -> Any:
    if not isinstance(data, dict) and not schema.many:
        raise InvalidInput("Expected a JSON object.", {"_schema": ["Expected a JSON object."]})
    try:
        return schema.load(data, partial=partial)
    except ValidationError as error:
        messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
        fields = ", ".join(sorted(str(name) for name in messages))
        raise InvalidInput(f"Invalid fields: {fields}.", messages) from error


# The platform records what teachers did from 2000 on; a recorded time further ahead than a day is a
# client's clock or a typo, and a lesson is not scheduled years ahead. Refusing such times at the door
# keeps every later step (local dates, periods, the database's own range) working with times it can place.
EARLIEST_PLAUSIBLE = datetime(2000, 1, 1, tzinfo=UTC)
RECORDED_AHEAD = timedelta(days=1)
SCHEDULED_AHEAD = timedelta(days=2 * 366)


def moment_within(ahead: timedelta, what: str) -> Callable[[datetime], None]:
    """A marshmallow validator: a time in [2000-01-01, now + `ahead`]."""

    def check(moment: datetime) -> None:
        try:
            utc = moment.astimezone(UTC)
        except OverflowError as error:
            raise ValidationError("Not a representable time.") from error
        if utc < EARLIEST_PLAUSIBLE:
            raise ValidationError("Times before 2000-01-01 are not accepted.")
        if utc > datetime.now(UTC) + ahead:
            raise ValidationError(f"Times more than {what} ahead are not accepted.")

    return check


plausible_moment = moment_within(RECORDED_AHEAD, "a day")  # when something happened
schedulable_moment = moment_within(SCHEDULED_AHEAD, "two years")  # when something is planned


def representable_moment(moment: datetime) -> None:
    """A marshmallow validator for query bounds: any time that exists in UTC (years 1–9999)."""
    try:
        moment.astimezone(UTC)
    except OverflowError as error:
        raise ValidationError("Not a representable time (out of range in UTC).") from error
