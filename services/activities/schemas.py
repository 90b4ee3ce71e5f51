"""What an activity looks like: a common envelope and one schema per kind, each with the time it records.

An activity arrives as
    {"id": "<uuid, optional>", "kind": "blog_post", "teacher_id": 7, "group_id": 3,
     "occurred_at": "2025-03-04T15:00:00+08:00", "details": {...kind's own fields...},
     "corrects": "<uuid of the activity this one corrects, optional>"}
Unknown kinds, unknown envelope fields and unknown detail fields are refused, each named.

Time: every kind says how much time an activity recorded, online or offline —
`recorded_time(details)` returns `(duration_minutes, online_hours, offline_hours)`: a timed activity's
minutes, a study record's declared hours, a classroom session's length; an untimed one (a blog post,
a comment, a small research topic) none. That is a fact, not a credit: what a kind credits as study
hours is the bureau's versioned rule set (reporting: `credits` in `GET /v1/rules`, whose documents'
default credits no study hours for blog posts).
"""

from __future__ import annotations

import json
from datetime import UTC
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from services.common.validation import ID, StrictSchema, plausible_moment, representable_moment

BUREAU_TIMEZONE = ZoneInfo("Asia/Shanghai")
MAX_BATCH = 500
MODES = ("online", "offline")
TEXT = validate.Length(min=1, max=200)
LONG_TEXT = validate.Length(min=1, max=20_000)
MINUTES = validate.Range(min=1, max=24 * 60)
STUDY_HOURS = validate.Range(min=0.25, max=200)
TWO_PLACES = Decimal("0.01")


def hours(value: float | Decimal) -> Decimal:
    return Decimal(str(value)).quantize(TWO_PLACES, rounding=ROUND_HALF_UP)


def by_mode(mode: str, minutes: int) -> tuple[int, Decimal, Decimal]:
    spent = hours(Decimal(minutes) / 60)
    return (minutes, spent, Decimal(0)) if mode == "online" else (minutes, Decimal(0), spent)


class LessonSchema(StrictSchema):
    """The lesson an observation, demonstration or polishing round is about."""

    subject = fields.String(required=True, validate=validate.Length(min=1, max=60))
    grade = fields.String(required=True, validate=validate.Length(min=1, max=60))
    title = fields.String(required=True, validate=TEXT)


class KindSchema(StrictSchema):
    """Base of the per-kind detail schemas."""

    label: ClassVar[str]  # the Chinese name schools see
    verb: ClassVar[str]  # the xAPI verb IRI (stable: subscribers filter on it)
    recordable_by_clients: ClassVar[bool] = True

    def recorded_time(self, details: dict[str, Any]) -> tuple[int, Decimal, Decimal]:
        return 0, Decimal(0), Decimal(0)  # untimed


class TimedKindSchema(KindSchema):
    mode = fields.String(required=True, validate=validate.OneOf(MODES))
    duration_minutes = fields.Integer(required=True, strict=True, validate=MINUTES)

    def recorded_time(self, details: dict[str, Any]) -> tuple[int, Decimal, Decimal]:
        return by_mode(details["mode"], details["duration_minutes"])


VERBS = "https://lianxiao.example/xapi/verbs"
ADL = "http://adlnet.gov/expapi/verbs"


class CollectiveLessonPrep(TimedKindSchema):
    label = "集体备课"
    verb = f"{VERBS}/prepared-collectively"
    lead_preparer_id = fields.Integer(required=True, strict=True)
    topic = fields.String(required=True, validate=TEXT)
    participant_ids = fields.List(fields.Integer(strict=True), required=True, validate=validate.Length(min=1, max=200))


class LessonObservation(TimedKindSchema):
    label = "听课评课"
    verb = f"{VERBS}/observed"
    observed_teacher_id = fields.Integer(required=True, strict=True)
    lesson = fields.Nested(LessonSchema, required=True)
    critique = fields.String(load_default=None, allow_none=True, validate=LONG_TEXT)


class TaughtLesson(TimedKindSchema):
    """Demonstration, research and open lessons: the teacher taught, others watched."""

    verb = f"{VERBS}/taught"
    lesson = fields.Nested(LessonSchema, required=True)
    audience_count = fields.Integer(load_default=None, allow_none=True, strict=True, validate=validate.Range(min=0))


class DemonstrationLesson(TaughtLesson):
    label = "示范课"


class ResearchLesson(TaughtLesson):
    label = "研究课"


class OpenLesson(TaughtLesson):
    label = "公开课"


class SameLessonDifferentDesigns(TimedKindSchema):
    label = "同课异构"
    verb = f"{VERBS}/designed"
    lesson = fields.Nested(LessonSchema, required=True)
    designer_ids = fields.List(fields.Integer(strict=True), required=True, validate=validate.Length(min=2, max=50))


class IterativeLessonPolishing(TimedKindSchema):
    label = "一课多磨"
    verb = f"{VERBS}/polished"
    lesson = fields.Nested(LessonSchema, required=True)
    round = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=50))


class SmallResearchTopic(KindSchema):
    """A small research topic (小课题): proposed, then monthly progress, then concluded."""

    label = "小课题"
    verb = f"{VERBS}/researched"
    topic = fields.String(required=True, validate=TEXT)
    stage = fields.String(required=True, validate=validate.OneOf(("proposal", "progress", "conclusion")))
    month = fields.String(
        load_default=None, allow_none=True,
        validate=validate.Regexp(r"^\d{4}-(0[1-9]|1[0-2])$", error="Use YYYY-MM."),
    )
    summary = fields.String(required=True, validate=LONG_TEXT)

    @validates_schema
    def progress_names_its_month(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if data.get("stage") == "progress" and not data.get("month"):
            raise ValidationError("Monthly progress needs its month (YYYY-MM).", "month")


class BlogPost(KindSchema):
    label = "博文"
    verb = "http://activitystrea.ms/schema/1.0/author"
    title = fields.String(required=True, validate=TEXT)
    url = fields.Url(load_default=None, allow_none=True)
    word_count = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=200_000))


class Comment(KindSchema):
    """A comment on an activity (a blog post, a lesson...), or a reply to another comment."""

    label = "评论"
    verb = f"{ADL}/commented"
    on_activity_id = fields.UUID(required=True)
    in_reply_to_id = fields.UUID(load_default=None, allow_none=True)
    text = fields.String(required=True, validate=validate.Length(min=1, max=5000))


class Lecture(TimedKindSchema):
    label = "专题讲座"
    verb = f"{VERBS}/lectured"
    title = fields.String(required=True, validate=TEXT)
    role = fields.String(required=True, validate=validate.OneOf(("speaker", "attendee")))


class SupervisionVisit(TimedKindSchema):
    label = "督导"
    verb = f"{VERBS}/supervised"
    visited_school_id = fields.Integer(required=True, strict=True)
    # The written report is what makes it a supervision visit, not a walk through the school.
    report = fields.String(required=True, validate=validate.Length(min=20, max=50_000))


class Training(TimedKindSchema):
    label = "培训"
    verb = f"{ADL}/attended"
    title = fields.String(required=True, validate=TEXT)
    organiser = fields.String(load_default=None, allow_none=True, validate=TEXT)


class StudyHours(KindSchema):
    title = fields.String(required=True, validate=TEXT)
    hours = fields.Decimal(required=True, places=2, validate=STUDY_HOURS, as_string=True)
    online: ClassVar[bool]

    def recorded_time(self, details: dict[str, Any]) -> tuple[int, Decimal, Decimal]:
        declared = hours(details["hours"])
        minutes = int(declared * 60)
        return (minutes, declared, Decimal(0)) if self.online else (minutes, Decimal(0), declared)


class OnlineCourseStudy(StudyHours):
    label = "网络研修"
    verb = f"{ADL}/completed"
    online = True


class OfflineStudy(StudyHours):
    label = "线下研修"
    verb = f"{ADL}/completed"
    online = False


class ClassroomSession(KindSchema):
    """A live network-classroom session, learned from the classroom relay's events only."""

    recordable_by_clients = False
    session_id = fields.String(required=True, validate=validate.Length(min=1, max=64))
    classroom_id = fields.Integer(required=True, strict=True)
    role = fields.String(required=True, validate=validate.OneOf(("master", "branch")))
    started_at = fields.AwareDateTime(required=True, default_timezone=UTC, validate=plausible_moment)
    ended_at = fields.AwareDateTime(required=True, default_timezone=UTC, validate=plausible_moment)

    @validates_schema
    def ends_after_it_starts(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if "started_at" in data and "ended_at" in data and data["ended_at"] <= data["started_at"]:
            raise ValidationError("A session ends after it starts.", "ended_at")

    def recorded_time(self, details: dict[str, Any]) -> tuple[int, Decimal, Decimal]:
        minutes = max(1, round((details["ended_at"] - details["started_at"]).total_seconds() / 60))
        return by_mode("online", minutes)


class ClassroomSessionTaught(ClassroomSession):
    label = "专递课堂授课"
    verb = f"{VERBS}/taught"


class ClassroomSessionAttended(ClassroomSession):
    label = "专递课堂听课"
    verb = f"{ADL}/attended"


KINDS: dict[str, type[KindSchema]] = {
    "collective_lesson_prep": CollectiveLessonPrep,
    "lesson_observation": LessonObservation,
    "demonstration_lesson": DemonstrationLesson,
    "research_lesson": ResearchLesson,
    "open_lesson": OpenLesson,
    "same_lesson_different_designs": SameLessonDifferentDesigns,
    "iterative_lesson_polishing": IterativeLessonPolishing,
    "small_research_topic": SmallResearchTopic,
    "blog_post": BlogPost,
    "comment": Comment,
    "lecture": Lecture,
    "supervision_visit": SupervisionVisit,
    "training": Training,
    "online_course_study": OnlineCourseStudy,
    "offline_study": OfflineStudy,
    "classroom_session_taught": ClassroomSessionTaught,
    "classroom_session_attended": ClassroomSessionAttended,
}
HIDEABLE_KINDS = ("comment", "blog_post")
MODERATOR_ROLES = ("blog_host", "moderator", "group_leader")


class ActivityIn(StrictSchema):
    """The envelope; `details` is validated by the kind's own schema (see `activities.log`)."""

    id = fields.UUID(load_default=None, allow_none=True)
    kind = fields.String(required=True, validate=validate.OneOf(sorted(KINDS), error="Unknown kind {input!r}."))
    teacher_id = fields.Integer(required=True, strict=True, validate=ID)
    group_id = fields.Integer(load_default=None, allow_none=True, strict=True, validate=ID)
    # Schools send local times; one without an offset is read in the bureau's time zone. Only a
    # plausible window is accepted: reports must be able to place every activity in a period.
    occurred_at = fields.AwareDateTime(required=True, default_timezone=BUREAU_TIMEZONE, validate=plausible_moment)
    details = fields.Dict(required=True)
    corrects = fields.UUID(load_default=None, allow_none=True)


class HideIn(StrictSchema):
    moderator_id = fields.Integer(required=True, strict=True)
    reason = fields.String(required=True, validate=validate.Length(min=2, max=500))


class ActivityQuery(StrictSchema):
    teacher_id = fields.Integer(load_default=None, allow_none=True, validate=ID)
    school_id = fields.Integer(load_default=None, allow_none=True, validate=ID)
    group_id = fields.Integer(load_default=None, allow_none=True, validate=ID)
    kind = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(sorted(KINDS)))
    since = fields.AwareDateTime(load_default=None, allow_none=True, default_timezone=BUREAU_TIMEZONE,
                                 validate=representable_moment)
    until = fields.AwareDateTime(load_default=None, allow_none=True, default_timezone=BUREAU_TIMEZONE,
                                 validate=representable_moment)
    include_hidden = fields.Boolean(load_default=True)
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=MAX_BATCH))
    cursor = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))


class ActivityOut(Schema):
    id = fields.String()
    kind = fields.String()
    label = fields.String()
    teacher_id = fields.Integer()
    school_id = fields.Integer()
    district_id = fields.Integer(allow_none=True)
    bureau_id = fields.Integer()
    group_id = fields.Integer(allow_none=True)
    occurred_at = fields.DateTime()
    duration_minutes = fields.Integer()
    # The recorded time by mode (not a credit: reporting's rule set decides what it credits).
    online_hours = fields.Float(metadata={"description": "Recorded online time in hours (0 when untimed); "
                                          "what it credits is the rule set's (GET /v1/rules)."})
    offline_hours = fields.Float(metadata={"description": "Recorded offline time in hours (0 when untimed)."})
    details = fields.Function(lambda activity: json.loads(activity.details))
    recorded_at = fields.DateTime()
    corrects = fields.String(allow_none=True, attribute="corrects_id")
    superseded_by = fields.String(allow_none=True, attribute="superseded_by_id")
    hidden = fields.Boolean()
    hidden_at = fields.DateTime(allow_none=True)
    hidden_by_teacher_id = fields.Integer(allow_none=True)
    hidden_reason = fields.String(allow_none=True)


# --- GET /xapi/statements: the query the gateway checks and activities answers --------------------

XAPI_VERSION = "1.0.3"
MAX_STATEMENTS = 500  # per page; `limit=0` asks for the most
DEFAULT_STATEMENTS = 100
STATEMENT_FORMATS = ("exact", "ids", "canonical")


class StatementQuery(StrictSchema):
    """GET /xapi/statements parameters (xAPI 1.0.3; services/activities/statement_query.py)."""

    statementId = fields.UUID(load_default=None, allow_none=True)
    voidedStatementId = fields.UUID(load_default=None, allow_none=True)
    agent = fields.Raw(load_default=None, allow_none=True)
    verb = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))
    activity = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))
    registration = fields.UUID(load_default=None, allow_none=True)
    related_activities = fields.Boolean(load_default=False)
    related_agents = fields.Boolean(load_default=False)
    since = fields.AwareDateTime(load_default=None, allow_none=True, default_timezone=UTC,
                                 validate=representable_moment)
    until = fields.AwareDateTime(load_default=None, allow_none=True, default_timezone=UTC,
                                 validate=representable_moment)
    limit = fields.Integer(load_default=DEFAULT_STATEMENTS, validate=validate.Range(min=0, max=2**31 - 1))
    format = fields.String(load_default="exact", validate=validate.OneOf(STATEMENT_FORMATS))
    attachments = fields.Boolean(load_default=False)
    ascending = fields.Boolean(load_default=False)
    cursor = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
