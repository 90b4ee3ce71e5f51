"""Validating input with marshmallow and turning its messages into a typed error."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError

from services.common.errors import InvalidInput


def load(schema: Schema, data: Any, *, partial: bool = False) -> Any:
    if not isinstance(data, dict) and not schema.many:
        raise InvalidInput("Expected a JSON object.", {"_schema": ["Expected a JSON object."]})
    try:
        return schema.load(data, partial=partial)
    except ValidationError as error:
        messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
        fields = ", ".join(sorted(str(name) for name in messages))
        raise InvalidInput(f"Invalid fields: {fields}.", messages) from error
