"""Marshmallow schemas: the shapes the relay accepts (over RPC and through the gateway)."""

from __future__ import annotations

import ipaddress
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from services.common.link_targets import BROADCASTING_UPLINK_BPS, MASTER_SCHOOL_LINK_BPS, MBIT, RECEIVING_DOWNLINK_BPS
from services.common.validation import ID, NAME, StrictSchema, schedulable_moment

# The bureau's link targets (services/common/link_targets.py): master school 100M, broadcasting ≥ 25M, branch ≥ 10M.
DEFAULT_MASTER_SCHOOL_LINK_BPS = MASTER_SCHOOL_LINK_BPS
DEFAULT_UPLINK_BPS = BROADCASTING_UPLINK_BPS
DEFAULT_DOWNLINK_BPS = RECEIVING_DOWNLINK_BPS
DEFAULT_SOURCE_BPS = 8 * MBIT  # what the broadcasting room sends (all simulcast layers together)
DEFAULT_RETURN_BPS = 2 * MBIT  # a branch camera back to the master room, in interactive kinds

CLASSROOM_KINDS = ("broadcasting", "receiving")
SESSION_KINDS = ("dedicated_delivery", "master_teacher", "online_research")
SESSION_STATUSES = ("scheduled", "live", "ended")
RECURRENCES = ("none", "daily", "weekdays", "weekly")
ROLES = ("master", "branch")
# planned: named for the session, nothing committed; joined: bandwidth committed; left: released.
MEMBER_STATES = ("planned", "joined", "left")
STREAM_STATES = ("ok", "degraded")

BITRATE = validate.Range(min=64_000, max=10_000 * MBIT)
PORT = validate.Range(min=1, max=65534)  # RTCP goes to port + 1


def _ipv4(value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError as error:
        raise ValidationError("Must be an IPv4 address.") from error


class ReceiveAddress(StrictSchema):
    """Where a room's receiving terminal listens for RTP; both or neither."""

    receive_host = fields.String(load_default=None, allow_none=True, validate=_ipv4)
    receive_port = fields.Integer(strict=True, load_default=None, allow_none=True, validate=PORT)

    @validates_schema
    def _both_or_neither(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if (data.get("receive_host") is None) != (data.get("receive_port") is None):
            raise ValidationError("Give receive_host and receive_port together.", "receive_port")


class ClassroomIn(ReceiveAddress):
    school_id = fields.Integer(required=True, strict=True, validate=ID)
    bureau_id = fields.Integer(required=True, strict=True, validate=ID)
    district_id = fields.Integer(strict=True, load_default=None, allow_none=True, validate=ID)
    # The school's total link; known from accounts. Default: 100 Mbit/s (the master school target).
    school_link_capacity_bps = fields.Integer(strict=True, load_default=None, allow_none=True, validate=BITRATE)
    name = fields.String(required=True, validate=NAME)
    kind = fields.String(required=True, validate=validate.OneOf(CLASSROOM_KINDS))
    uplink_capacity_bps = fields.Integer(strict=True, load_default=None, allow_none=True, validate=BITRATE)
    downlink_capacity_bps = fields.Integer(strict=True, load_default=None, allow_none=True, validate=BITRATE)


class SessionIn(StrictSchema):
    kind = fields.String(required=True, validate=validate.OneOf(SESSION_KINDS))
    title = fields.String(required=True, validate=NAME)
    master_classroom_id = fields.Integer(required=True, strict=True, validate=ID)
    teacher_id = fields.Integer(strict=True, load_default=None, allow_none=True, validate=ID)
    # Within [2000-01-01, two years ahead]: a time the calendar and the database can hold (issue 12).
    starts_at = fields.AwareDateTime(required=True, validate=schedulable_moment)
    ends_at = fields.AwareDateTime(required=True, validate=schedulable_moment)
    recurrence = fields.String(load_default="none", validate=validate.OneOf(RECURRENCES))
    recurrence_until = fields.AwareDateTime(load_default=None, allow_none=True, validate=schedulable_moment)
    source_bps = fields.Integer(strict=True, load_default=None, allow_none=True, validate=BITRATE)
    branch_bps = fields.Integer(strict=True, load_default=None, allow_none=True, validate=BITRATE)
    return_bps = fields.Integer(
        strict=True, load_default=None, allow_none=True, validate=validate.Range(min=0, max=10_000 * MBIT)
    )
    branch_classroom_ids = fields.List(fields.Integer(strict=True, validate=ID), load_default=list)

    @validates_schema
    def _timetable(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if data["ends_at"] <= data["starts_at"]:
            raise ValidationError("ends_at must be after starts_at.", "ends_at")
        if data["recurrence"] == "none" and data.get("recurrence_until") is not None:
            raise ValidationError("recurrence_until needs a recurrence.", "recurrence_until")
        until = data.get("recurrence_until")
        if until is not None and until < data["starts_at"]:
            raise ValidationError("recurrence_until is before the first lesson.", "recurrence_until")


class JoinIn(ReceiveAddress):
    teacher_id = fields.Integer(strict=True, load_default=None, allow_none=True, validate=ID)
    downlink_bps = fields.Integer(strict=True, load_default=None, allow_none=True, validate=BITRATE)
    return_bps = fields.Integer(
        strict=True, load_default=None, allow_none=True, validate=validate.Range(min=0, max=10_000 * MBIT)
    )


class TokenIn(StrictSchema):
    ttl_seconds = fields.Integer(strict=True, load_default=None, allow_none=True, validate=validate.Range(10, 86_400))


class SenderIn(StrictSchema):
    """An encoder's RTP source address, registered so it needs no hello datagram."""

    host = fields.String(required=True, validate=_ipv4)
    port = fields.Integer(required=True, strict=True, validate=PORT)


# --- what the relay returns (documented in the gateway's OpenAPI) ------------------------------------------


class ClassroomOut(Schema):
    id = fields.Integer()
    school_id = fields.Integer()
    school_link_capacity_bps = fields.Integer()
    name = fields.String()
    kind = fields.String()
    uplink_capacity_bps = fields.Integer()
    downlink_capacity_bps = fields.Integer()
    receive_host = fields.String(allow_none=True)
    receive_port = fields.Integer(allow_none=True)


class MemberOut(Schema):
    classroom_id = fields.Integer()
    school_id = fields.Integer()
    role = fields.String()
    state = fields.String()
    teacher_id = fields.Integer(allow_none=True)
    downlink_bps = fields.Integer()
    return_bps = fields.Integer()
    source_bps = fields.Integer()
    receive_host = fields.String(allow_none=True)
    receive_port = fields.Integer(allow_none=True)
    joined_at = fields.String(allow_none=True)
    left_at = fields.String(allow_none=True)
    stream_state = fields.String()


class SessionOut(Schema):
    id = fields.Integer()
    kind = fields.String()
    title = fields.String()
    master_classroom_id = fields.Integer()
    teacher_id = fields.Integer(allow_none=True)
    status = fields.String()
    starts_at = fields.String()
    ends_at = fields.String()
    recurrence = fields.String()
    recurrence_until = fields.String(allow_none=True)
    source_bps = fields.Integer()
    branch_bps = fields.Integer(allow_none=True)
    return_bps = fields.Integer()
    started_at = fields.String(allow_none=True)
    occurrences_held = fields.Integer()
    dataplane = fields.String(allow_none=True)  # the relay data plane forwarding it while live
    classrooms = fields.List(fields.Nested(MemberOut))


class JoinTokenOut(Schema):
    token = fields.String()
    session = fields.String()
    classroom = fields.String()
    expires_at = fields.String()
    hello = fields.String()
    dataplane = fields.String(allow_none=True)
    # [host, port] of the session's data plane; null until the session is live (placed).
    media_address = fields.List(fields.Raw(), allow_none=True)


class SessionListQuery(StrictSchema):
    status = fields.String(load_default=None, validate=validate.OneOf(("scheduled", "live", "ended")))
