"""The activity kinds reporting counts, what each credits as study hours, and the read-model columns.

Kept apart from `rules` (which validates rule sets against these kinds) so the table definitions in
`models` can name one column per kind without importing the rules machinery.

Time is kept in whole seconds: every duration activities records is whole minutes and every declared
study time has two decimals of an hour (36 s), so a sum of seconds is exact; hours are rounded for
display only. What an activity credits is not decided when it is counted but when it is judged, by
the credit table of the rule set in force (`credits` in `GET /v1/rules`): the tallies keep every
kind's count and time, online and offline, so a bureau's change of credits applies to the periods it
covers without rewriting any tally, and a past report is still explained by the table of then.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from services.reporting.schemas import MODES

# The credit table itself is part of reporting's face (`schemas`): the gateway publishes it.

ACTIVITY_KINDS = (
    "collective_lesson_prep", "lesson_observation", "demonstration_lesson", "research_lesson",
    "open_lesson", "same_lesson_different_designs", "iterative_lesson_polishing", "small_research_topic",
    "blog_post", "comment", "lecture", "supervision_visit", "training", "online_course_study",
    "offline_study", "classroom_session_taught", "classroom_session_attended",
)

# Kinds that are online whatever they say (a post or a comment is written on the platform).
ONLINE_KINDS = frozenset({"blog_post", "comment", "online_course_study", "classroom_session_taught",
                          "classroom_session_attended"})
OFFLINE_KINDS = frozenset({"offline_study"})

# Quantities every tally row carries, whatever the rules.
TOTAL_COLUMNS = ("activities",)


def count_column(kind: str) -> str:
    """How many activities of `kind` a tally row holds."""
    return f"count_{kind}"


def online_count_column(kind: str) -> str:
    """How many of those were online (rules may count online activities only)."""
    return f"online_{kind}"


def seconds_column(kind: str) -> str:
    """The recorded time of those activities, online and offline, in seconds."""
    return f"seconds_{kind}"


def online_seconds_column(kind: str) -> str:
    """The recorded time of the online ones, in seconds (offline = all − online)."""
    return f"online_seconds_{kind}"


MEASURE_COLUMNS = (
    *TOTAL_COLUMNS,
    *(count_column(kind) for kind in ACTIVITY_KINDS),
    *(online_count_column(kind) for kind in ACTIVITY_KINDS),
    *(seconds_column(kind) for kind in ACTIVITY_KINDS),
    *(online_seconds_column(kind) for kind in ACTIVITY_KINDS),
)


# --- reading an activity statement's time and mode --------------------------------------------------

def _iso_duration_seconds(text: Any) -> int | None:
    """Seconds of an xAPI duration as activities writes it (`PT1H30M`, `PT45M`, `PT0S`)."""
    if not isinstance(text, str) or not text.startswith("PT"):
        return None
    total, number = Decimal(0), ""
    for char in text[2:]:
        if char.isdigit() or char == ".":
            number += char
            continue
        if char not in "HMS" or not number:
            return None
        total += Decimal(number) * {"H": 3600, "M": 60, "S": 1}[char]
        number = ""
    return int(total) if not number else None


def seconds_of_hours(value: Any) -> int:
    return int((Decimal(str(value or 0)) * 3600).to_integral_value())


def statement_time(kind: str, details: dict[str, Any], result: dict[str, Any], online_hours: Any,
                   offline_hours: Any) -> tuple[int, bool]:
    """(seconds, online) of one activity statement, exactly as recorded.

    A study record's declared hours are read from its details (activities' `duration` truncates
    them to minutes); a timed activity's minutes from `result.duration`; its mode from its details
    (`mode`), its kind, or else the side activities credited.
    """
    if "hours" in details:
        seconds = seconds_of_hours(details["hours"])
    else:
        parsed = _iso_duration_seconds(result.get("duration"))
        seconds = parsed if parsed is not None else seconds_of_hours(online_hours) + seconds_of_hours(offline_hours)
    if details.get("mode") in MODES:
        online = details["mode"] == "online"
    elif kind in ONLINE_KINDS or kind in OFFLINE_KINDS:
        online = kind in ONLINE_KINDS
    else:
        online = Decimal(str(online_hours or 0)) > 0
    return seconds, online
