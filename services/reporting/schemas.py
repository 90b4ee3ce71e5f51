"""What the reporting RPC accepts: a period, an export request, a rule set's target."""

from __future__ import annotations

import re

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
        ("noncompliant_share", "未达标比例"), ("compliant", "学校达标"), ("online_hours", "网络研修学时"),
        ("offline_hours", "线下研修学时"), ("online_hours_per_teacher", "人均网络学时"), ("activities", "活动数"),
        ("groups", "教研组数"), ("compliant_groups", "达标教研组"),
    ]),
    ("districts", "片区", [
        ("district_id", "片区ID"), ("name", "片区"), ("schools", "学校数"), ("compliant_schools", "达标学校"),
        ("teachers", "教师数"), ("noncompliant_teachers", "未达标教师"), ("noncompliant_share", "未达标比例"),
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
