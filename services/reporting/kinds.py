"""The activity kinds reporting counts, and the read-model columns that hold them.

Kept apart from `rules` (which validates rule sets against these kinds) so the table definitions in
`models` can name one column per kind without importing the rules machinery.
"""

from __future__ import annotations

ACTIVITY_KINDS = (
    "collective_lesson_prep", "lesson_observation", "demonstration_lesson", "research_lesson",
    "open_lesson", "same_lesson_different_designs", "iterative_lesson_polishing", "small_research_topic",
    "blog_post", "comment", "lecture", "supervision_visit", "training", "online_course_study",
    "offline_study", "classroom_session_taught", "classroom_session_attended",
)

# Quantities every tally row carries, whatever the rules: all activities and the hours they credit.
TOTAL_COLUMNS = ("activities", "online_centihours", "offline_centihours")


def count_column(kind: str) -> str:
    """How many activities of `kind` a tally row holds."""
    return f"count_{kind}"


def online_count_column(kind: str) -> str:
    """How many of those were online (rules may count online activities only)."""
    return f"online_{kind}"


MEASURE_COLUMNS = (
    *TOTAL_COLUMNS,
    *(count_column(kind) for kind in ACTIVITY_KINDS),
    *(online_count_column(kind) for kind in ACTIVITY_KINDS),
)
