"""Validating input with marshmallow and turning its messages into a typed error."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate

from services.common.errors import InvalidInput

# Characters no input text may carry (issue 12, item 12): C0/C1 controls but tab and line breaks (a NUL
# became a 500 on PostgreSQL), bidirectional overrides and isolates (text that displays as something
# else), and zero-width characters (two names or numbers that look the same but differ).
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
ZERO_WIDTH = frozenset("\u200b\u2060\ufeff\u180e")
ALLOWED_CONTROLS = frozenset("\t\n\r")


# The same set as one character class, so a text is scanned by the regex engine, not character by character
# in Python (validating a batch of 500 activities spent a third of its time here); Cc is U+0000-U+001F and
# U+007F-U+009F, Cs the surrogates (tests/common/test_hidden_characters.py compares it with the categories).
HIDDEN_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff"
                              + "".join(sorted(BIDI_CONTROLS | ZERO_WIDTH)) + "]")


def hidden_character(text: str) -> str | None:
    """The first character that may appear in no input text, as `U+XXXX`, or None."""
    found = HIDDEN_CHARACTER.search(text)
    return f"U+{ord(found.group()):04X}" if found is not None else None


def hidden_by_category(character: str) -> bool:
    """The definition `HIDDEN_CHARACTER` implements."""
    return character in BIDI_CONTROLS or character in ZERO_WIDTH or (
        unicodedata.category(character) in ("Cc", "Cs") and character not in ALLOWED_CONTROLS)


def name_problem(text: str) -> str | None:
    """Why `text` cannot be a name (one visible line: no control, format or unassigned characters)."""
    for character in text:
        if unicodedata.category(character) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            return f"Contains an invisible or control character (U+{ord(character):04X}); names must be plain text."
    return None


def visible_name(text: str) -> None:
    problem = name_problem(text)
    if problem is not None:
        raise ValidationError(problem)


def name_field_validator(max_length: int = 200) -> validate.Validator:
    return validate.And(validate.Length(min=1, max=max_length), visible_name)


def normalise_code(text: str) -> str:
    """Staff numbers and codes compare after NFKC: full-width 'Ｈ０２０１' is 'H0201'."""
    return unicodedata.normalize("NFKC", text).strip()


class NormalisedCode(fields.String):
    """A code (staff number...) stored and compared in NFKC form."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        return normalise_code(super()._deserialize(value, attr, data, **kwargs))


NAME = name_field_validator(200)
# Database ids are 32-bit integers; a larger number can only be a mistake (and must not reach the database,
# where it would be a driver error instead of a clear 422).
MAX_ID = 2**31 - 1
ID = validate.Range(min=1, max=MAX_ID)


class StrictSchema(Schema):
    """Input schemas refuse unknown fields, naming them."""

    class Meta:
        unknown = RAISE

    @pre_load
    def refuse_hidden_characters(self, data: Any, **_kwargs: Any) -> Any:
        """Every text field of every service, nested or in lists: no controls, overrides or zero-width."""
        problems: dict[str, list[str]] = {}
        if isinstance(data, dict):
            for key, value in data.items():
                found = _hidden_in(value)
                if found is not None:
                    problems[str(key)] = [f"Contains a control, bidirectional or zero-width character ({found})."]
        if problems:
            raise ValidationError(problems)
        return data


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


def _hidden_in(value: Any, depth: int = 0) -> str | None:
    if isinstance(value, str):
        return hidden_character(value)
    if depth > 20:
        return None
    if isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        children = value
    else:
        return None
    for child in children:
        found = _hidden_in(child, depth + 1)
        if found is not None:
            return found
    return None
