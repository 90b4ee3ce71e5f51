"""What the reporting RPC accepts: a period, an export request, a rule set's target."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from services.common.validation import ID, StrictSchema

MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
# A period in a query string: `month:2025-03` or `term:<term code>`.
PERIOD_TEXT = re.compile(r"^(month:\d{4}-(0[1-9]|1[0-2])|term:[^\s]{1,40})$")

# The bulletin's sections as exported: (section key in the bulletin, sheet title, [(field, column header)]).
SECTIONS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("schools", "学校", [
        ("school_id", "学校ID"), ("code", "学校代码"), ("name", "学校"), ("district_name", "片区"),
        ("teachers", "教师数"), ("compliant_teachers", "达标教师"), ("noncompliant_teachers", "未达标教师"),
        ("noncompliant_share", "未达标比例"), ("compliant", "学校达标(003)"),
        ("teachers_meeting_every_rule", "全部指标达标教师"), ("online_hours", "网络研修学时"),
        ("offline_hours", "线下研修学时"), ("online_hours_per_teacher", "人均网络学时"), ("activities", "活动数"),
        ("groups", "教研组数"), ("compliant_groups", "达标教研组"),
    ]),
    ("districts", "片区", [
        ("district_id", "片区ID"), ("name", "片区"), ("schools", "学校数"), ("compliant_schools", "达标学校"),
        ("teachers", "教师数"), ("noncompliant_teachers", "未达标教师"), ("noncompliant_share", "未达标比例"),
        ("teachers_meeting_every_rule", "全部指标达标教师"),
        ("online_hours", "网络研修学时"), ("offline_hours", "线下研修学时"), ("activities", "活动数"),
    ]),
    ("excellent_teachers", "优秀教师", [
        ("rank", "名次"), ("teacher_id", "教师ID"), ("name", "姓名"), ("staff_number", "工号"),
        ("school_name", "学校"),
        ("online_hours", "网络研修学时"), ("offline_hours", "线下研修学时"), ("activities", "活动数"),
    ]),
    ("excellent_groups", "优秀教研组", [
        ("rank", "名次"), ("group_id", "教研组ID"), ("name", "教研组"), ("school_name", "学校"),
        ("activities", "活动数"),
    ]),
    ("most_improved", "进步最大", [
        ("rank", "名次"), ("school_id", "学校ID"), ("name", "学校"), ("compliant_share_before", "上期达标比例"),
        ("compliant_share_now", "本期达标比例"), ("improvement", "提升"),
    ]),
    ("lagging_schools", "待改进学校", [
        ("school_id", "学校ID"), ("name", "学校"), ("teachers", "教师数"), ("noncompliant_teachers", "未达标教师"),
        ("noncompliant_share", "未达标比例"), ("misses", "未达标项目"),
    ]),
    ("weekly_activity_short", "每周活动不足", [
        ("school_id", "学校ID"), ("name", "学校"), ("compliant", "学校达标(003)"),
        ("weeks_with_activity", "有活动周数"), ("weeks_judged", "已评周数"),
    ]),
    ("cross_school_groups", "跨校协作组", [
        ("group_id", "协作组ID"), ("name", "协作组"), ("kind", "类型"), ("activities", "活动数"),
        ("compliant", "达标"), ("months_missed", "未达标月份"),
    ]),
]
SECTION_KEYS = [key for key, _, _ in SECTIONS]


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


# --- what each activity kind credits as study hours (published by GET /v1/rules and the OpenAPI) ----

# Report labels (the names schools see; services/activities/schemas.py gives the same).
KIND_LABELS = {
    "collective_lesson_prep": "集体备课", "lesson_observation": "听课评课", "demonstration_lesson": "示范课",
    "research_lesson": "研究课", "open_lesson": "公开课", "same_lesson_different_designs": "同课异构",
    "iterative_lesson_polishing": "一课多磨", "small_research_topic": "小课题", "blog_post": "博文",
    "comment": "评论", "lecture": "专题讲座", "supervision_visit": "督导", "training": "培训",
    "online_course_study": "网络研修", "offline_study": "线下研修", "classroom_session_taught": "专递课堂授课",
    "classroom_session_attended": "专递课堂听课",
}

# How an activity may credit study hours:
#   duration      its recorded time (a timed activity's minutes, a study record's declared hours) in its mode
#   per_activity  a fixed number of minutes per activity, in a fixed mode (a bureau's own choice)
#   none          no study hours (it may still be counted by a rule, e.g. blog posts)
CREDIT_BASES = ("duration", "per_activity", "none")
MODES = ("online", "offline")

# The documents' default: study hours come only from timed study activities (003: >= 50 h online,
# >= 20 h offline, online learning and offline work by collective preparation, observing and polishing
# lessons and research; 001: trainings, lectures, supervision and demonstration lessons as research
# and training work). Blog posts, comments and small topics are counted (000), never timed; a
# dedicated-delivery lesson is the class's own teaching (004), not study.
DEFAULT_CREDITS: dict[str, dict[str, Any]] = {
    **{kind: {"basis": "duration"} for kind in (
        "collective_lesson_prep", "lesson_observation", "demonstration_lesson", "research_lesson", "open_lesson",
        "same_lesson_different_designs", "iterative_lesson_polishing", "lecture", "supervision_visit", "training",
        "online_course_study", "offline_study")},
    **{kind: {"basis": "none"} for kind in (
        "small_research_topic", "blog_post", "comment", "classroom_session_taught", "classroom_session_attended")},
}
# Where each default comes from (README "Reporting" repeats this table).
CREDIT_SOURCES = {
    "collective_lesson_prep": "003 (集体备课 offline), 000 (网络集体备课 online)",
    "lesson_observation": "003 (观课磨课)", "iterative_lesson_polishing": "003 (三备两磨)",
    "same_lesson_different_designs": "001 (同课异构)", "demonstration_lesson": "001 (示范课)",
    "research_lesson": "001 (研究课)", "open_lesson": "001 (公开课)", "lecture": "001 (讲座)",
    "supervision_visit": "001 (督导)", "training": "001 (集中培训), 003 (培训课程)",
    "online_course_study": "003 (网络研修 ≥ 50 学时)", "offline_study": "003 (线下研修 ≥ 20 学时)",
    "small_research_topic": "000 (counted monthly per group, untimed)",
    "blog_post": "000 (counted: ≥ 3 posts a term, untimed)", "comment": "000 (untimed)",
    "classroom_session_taught": "004 (the class's own teaching)",
    "classroom_session_attended": "004 (the class's own teaching)",
}


def credit_text(entry: dict[str, Any]) -> str:
    """One credit in words, as `GET /v1/rules` and the API description state it."""
    if entry["basis"] == "duration":
        return "its recorded time, as online or offline study hours by its mode"
    if entry["basis"] == "per_activity":
        return f"{entry['minutes']:g} minutes of {entry['mode']} study hours per activity"
    return "no study hours"


def credit_table_text() -> str:
    """The documents' default credit table in Markdown (the OpenAPI description of the rules routes)."""
    lines = ["| kind | label | credits by default | source |", "|---|---|---|---|"]
    lines += [f"| `{kind}` | {label} | {credit_text(DEFAULT_CREDITS[kind])} | {CREDIT_SOURCES[kind]} |"
              for kind, label in KIND_LABELS.items()]
    return "\n".join(lines)
