"""Shapes only the gateway has: problems, list envelopes, query parameters, small path-derived bodies.

Everything a service accepts or returns is described by that service's own schemas
(e.g. `services.accounts.schemas`); the gateway reuses them and only wraps them here.
"""

from __future__ import annotations

from marshmallow import Schema, fields

from services.accounts.schemas import PageIn, TeacherOut
from services.common.validation import ID, StrictSchema


class ProblemError(Schema):
    """One problem of a request: a field (dotted path) or a row/column of an uploaded file."""

    field = fields.String(metadata={"description": "Dotted path of the field in the JSON body or query."})
    row = fields.Integer(metadata={"description": "Row in the uploaded file as Excel numbers it (header = 1)."})
    column = fields.String()
    reason = fields.String(required=True)


class Problem(Schema):
    """RFC 9457 problem details (`application/problem+json`)."""

    type = fields.String(required=True, metadata={"description": "URI naming the kind of problem."})
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    instance = fields.String(metadata={"description": "The request path."})
    errors = fields.List(fields.Nested(ProblemError), metadata={"description": "Every field or row at fault."})


class Health(Schema):
    status = fields.String()
    checks = fields.Dict(keys=fields.String(), values=fields.String())


class ScopeOut(Schema):
    """What the presented token may see and change."""

    bureau_id = fields.Integer()
    kind = fields.String(metadata={"description": "bureau, district or school"})
    id = fields.Integer(metadata={"description": "Id of the bureau, district or school."})
    access = fields.String(metadata={"description": "read or write"})
    token_id = fields.Integer()
    expires_at = fields.String()


class TeacherPageQuery(PageIn):
    include_inactive = fields.Boolean(load_default=False)


class GroupListQuery(StrictSchema):
    school_id = fields.Integer(validate=ID)


class AllianceMemberIn(StrictSchema):
    school_id = fields.Integer(required=True, strict=True, validate=ID)


class TeacherPage(Schema):
    items = fields.List(fields.Nested(TeacherOut))
    next_after_id = fields.Integer(allow_none=True, metadata={"description": "Cursor of the next page, if any."})
    next = fields.String(allow_none=True, metadata={"description": "URL of the next page, if any."})


class RosterResult(Schema):
    school_id = fields.Integer()
    rows = fields.Integer(metadata={"description": "Teachers in the file."})
    created = fields.Integer()
    updated = fields.Integer()
    unchanged = fields.Integer()


def list_of(item: type[Schema], name: str) -> type[Schema]:
    """A named `{"items": [...]}` envelope (named so the OpenAPI document gets one component per list)."""
    return Schema.from_dict({"items": fields.List(fields.Nested(item))}, name=name)
