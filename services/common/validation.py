"""Validating input with marshmallow and turning its messages into a typed error."""

from __future__ import annotations

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
