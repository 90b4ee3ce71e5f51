"""Marshmallow schemas: the shapes accounts accepts (over RPC and through the gateway) and returns."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from services.common.link_targets import MASTER_SCHOOL_LINK_BPS, RECEIVING_DOWNLINK_BPS
from services.common.validation import ID, MAX_ID, NAME, NormalisedCode, StrictSchema, name_field_validator

SCHOOL_KINDS = ("master", "branch", "ordinary")
GROUP_KINDS = ("research", "collaboration", "studio")
SCOPE_KINDS = ("bureau", "district", "school")
ACCESS_LEVELS = ("read", "write")
# Roles a person can hold, several at once (the reporting rules' quotas depend on them).
ROLES = (
    "teacher",
    "group_leader",
    "blog_host",
    "moderator",
    "middle_manager",
    "dean",
    "principal",
    "researcher",
    "centre_member",
    "bureau_admin",
)
# A school's link when registration does not say: a master school's, else one receiving classroom's.
DEFAULT_MASTER_LINK_BPS = MASTER_SCHOOL_LINK_BPS
DEFAULT_SCHOOL_LINK_BPS = RECEIVING_DOWNLINK_BPS
# The largest roster file (CSV or XLSX) accepted; the gateway refuses a bigger upload before reading it all.
ROSTER_MAX_FILE_BYTES = 5 * 1024 * 1024

CODE = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$", error="Use 1–40 letters, digits, '_', '.', '-'.")


class BureauIn(StrictSchema):
    code = fields.String(required=True, validate=CODE)
    name = fields.String(required=True, validate=NAME)
    timezone = fields.String(load_default="Asia/Shanghai", validate=validate.Length(min=1, max=64))


class BureauOut(Schema):
    id = fields.Integer()
    code = fields.String()
    name = fields.String()
    timezone = fields.String()


class DistrictIn(StrictSchema):
    bureau_id = fields.Integer(required=True, strict=True, validate=ID)
    name = fields.String(required=True, validate=NAME)
    hub_school_id = fields.Integer(strict=True, validate=ID, allow_none=True, load_default=None)


class DistrictOut(Schema):
    id = fields.Integer()
    bureau_id = fields.Integer()
    name = fields.String()
    hub_school_id = fields.Integer(allow_none=True)


class SchoolIn(StrictSchema):
    bureau_id = fields.Integer(required=True, strict=True, validate=ID)
    district_id = fields.Integer(strict=True, validate=ID, allow_none=True, load_default=None)
    code = fields.String(required=True, validate=CODE)
    name = fields.String(required=True, validate=NAME)
    kind = fields.String(load_default="ordinary", validate=validate.OneOf(SCHOOL_KINDS))
    link_capacity_bps = fields.Integer(
        strict=True, allow_none=True, load_default=None, validate=validate.Range(min=1_000_000, max=100_000_000_000)
    )


class SchoolOut(Schema):
    id = fields.Integer()
    bureau_id = fields.Integer()
    district_id = fields.Integer(allow_none=True)
    code = fields.String()
    name = fields.String()
    kind = fields.String()
    link_capacity_bps = fields.Integer()


class AllianceIn(StrictSchema):
    bureau_id = fields.Integer(required=True, strict=True, validate=ID)
    name = fields.String(required=True, validate=NAME)
    lead_school_id = fields.Integer(required=True, strict=True, validate=ID)
    member_school_ids = fields.List(fields.Integer(strict=True, validate=ID), load_default=list)


class AllianceOut(Schema):
    id = fields.Integer()
    bureau_id = fields.Integer()
    name = fields.String()
    lead_school_id = fields.Integer()
    member_school_ids = fields.List(fields.Integer())


class TeacherIn(StrictSchema):
    school_id = fields.Integer(required=True, strict=True, validate=ID)
    staff_number = NormalisedCode(required=True, validate=CODE)
    name = fields.String(required=True, validate=name_field_validator(100))
    subject = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=60))
    grade = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=60))
    roles = fields.List(fields.String(validate=validate.OneOf(ROLES)), load_default=lambda: ["teacher"])


class TeacherUpdate(StrictSchema):
    name = fields.String(validate=name_field_validator(100))
    subject = fields.String(allow_none=True, validate=validate.Length(max=60))
    grade = fields.String(allow_none=True, validate=validate.Length(max=60))
    roles = fields.List(fields.String(validate=validate.OneOf(ROLES)))
    active = fields.Boolean()


class TeacherOut(Schema):
    id = fields.Integer()
    school_id = fields.Integer()
    staff_number = fields.String()
    name = fields.String()
    subject = fields.String(allow_none=True)
    grade = fields.String(allow_none=True)
    active = fields.Boolean()
    roles = fields.List(fields.String())
    group_ids = fields.List(fields.Integer())


class GroupIn(StrictSchema):
    bureau_id = fields.Integer(required=True, strict=True, validate=ID)
    kind = fields.String(required=True, validate=validate.OneOf(GROUP_KINDS))
    school_id = fields.Integer(strict=True, validate=ID, allow_none=True, load_default=None)
    name = fields.String(required=True, validate=NAME)
    subject = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=60))
    grade = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=60))
    leader_id = fields.Integer(strict=True, validate=ID, allow_none=True, load_default=None)
    member_ids = fields.List(fields.Integer(strict=True, validate=ID), load_default=list)


class GroupOut(Schema):
    id = fields.Integer()
    bureau_id = fields.Integer()
    kind = fields.String()
    school_id = fields.Integer(allow_none=True)
    name = fields.String()
    subject = fields.String(allow_none=True)
    grade = fields.String(allow_none=True)
    leader_id = fields.Integer(allow_none=True)
    member_ids = fields.List(fields.Integer())


class TokenIn(StrictSchema):
    scope_kind = fields.String(required=True, validate=validate.OneOf(SCOPE_KINDS))
    scope_id = fields.Integer(required=True, strict=True, validate=ID)
    label = fields.String(required=True, validate=NAME)
    access = fields.String(load_default="read", validate=validate.OneOf(ACCESS_LEVELS))
    ttl_days = fields.Integer(load_default=90, strict=True, validate=validate.Range(min=1, max=366))


class TokenOut(Schema):
    id = fields.Integer()
    prefix = fields.String()
    label = fields.String()
    bureau_id = fields.Integer()
    scope_kind = fields.String()
    scope_id = fields.Integer()
    access = fields.String()
    created_at = fields.DateTime()
    expires_at = fields.DateTime()
    revoked_at = fields.DateTime(allow_none=True)


class IssuedTokenOut(TokenOut):
    token = fields.String()


class PageIn(StrictSchema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    after_id = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_ID))


MAX_NAME_LOOKUP = 2000


class SchoolFactsIn(StrictSchema):
    """Schools another service needs the facts of (the relay, registering classrooms)."""

    school_ids = fields.List(fields.Integer(strict=True, validate=ID), required=True,
                             validate=validate.Length(max=MAX_NAME_LOOKUP))


class SchoolFactsOut(Schema):
    """What accounts vouches for about a school: its bureau, district and internet link."""

    id = fields.Integer()
    bureau_id = fields.Integer()
    district_id = fields.Integer(allow_none=True)
    link_capacity_bps = fields.Integer()


class TeacherNamesIn(StrictSchema):
    """A batch of teacher ids whose names a report needs (a bulletin's rankings, a school's teachers)."""

    teacher_ids = fields.List(fields.Integer(strict=True, validate=ID), required=True,
                              validate=validate.Length(max=MAX_NAME_LOOKUP))
