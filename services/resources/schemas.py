"""The resources service's face: what the resource library accepts and returns (docs/recording.md).

A resource is one finished recording of a live lesson (`recording.available` on `classroom_relay.events`)
with its metadata, knowledge-point clips and sharing; the patrol list is the recordings still running.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from services.common.validation import ID, StrictSchema


def _not_blank(text: str) -> None:
    if not text.strip():
        raise ValidationError("Must not be only spaces.")


TEXT = validate.And(validate.Length(min=1, max=200), _not_blank)
SHORT = validate.Length(min=1, max=60)
KEY = validate.Regexp(r"^[a-z0-9-]{1,64}\Z", error="A recording key is 1–64 of a-z, 0-9 and '-'.")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MIN_CLIP_SECONDS = 1.0
MAX_CLIPS = 200  # knowledge points of one lesson; far more than a 45-minute lesson has
MAX_RETENTION_DAYS = 3650
WATCH_TARGETS = ("live_session", "resource")
# One seconds_watched report can never exceed this much (the service caps it by wall time as well).
MAX_HEARTBEAT_SECONDS = 3600
# Seconds of a recording: a lesson, or a long research meeting, never a day.
MAX_DURATION_SECONDS = 24 * 3600


class Seconds(fields.Float):
    """A JSON number of seconds (not a numeric string, not a boolean)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError("Not a number of seconds.")
        return super()._deserialize(value, attr, data, **kwargs)


# --- consumed events (classroom_relay.events) ----------------------------------------------------------

class TrackIn(Schema):
    class Meta:
        unknown = "include"  # the recorder may describe tracks with more fields; they are kept as given

    track = fields.String(required=True, validate=SHORT)
    kind = fields.String(required=True, validate=SHORT)


class GapIn(Schema):
    class Meta:
        unknown = "include"

    start_seconds = fields.Float(required=True, validate=validate.Range(min=0, max=MAX_DURATION_SECONDS))
    end_seconds = fields.Float(required=True, validate=validate.Range(min=0, max=MAX_DURATION_SECONDS))
    reason = fields.String(load_default=None, allow_none=True)


# A file of a recording is a plain name in its folder (index.m3u8, program.mp4): it is signed into playback
# URLs, so a path or a name the URL signer refuses must stop at the door, not fail every playback later.
FILE = validate.Regexp(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}\Z",
                       error="A file is a plain name in the recording's folder.")


class FilesIn(Schema):
    class Meta:
        unknown = "include"

    hls = fields.String(load_default="index.m3u8", allow_none=True, validate=FILE)
    courseware_hls = fields.String(load_default=None, allow_none=True, validate=FILE)
    program_mp4 = fields.String(load_default=None, allow_none=True, validate=FILE)
    courseware_mp4 = fields.String(load_default=None, allow_none=True, validate=FILE)


class RecordingStarted(Schema):
    """`recording.started` (and the common part of `recording.ended`); unknown fields are ignored."""

    class Meta:
        unknown = "exclude"

    recording_id = fields.Integer(required=True, strict=True, validate=ID)
    key = fields.String(required=True, validate=KEY)
    session_id = fields.Integer(required=True, strict=True, validate=ID)
    session_kind = fields.String(load_default=None, allow_none=True, validate=SHORT)
    title = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    school_id = fields.Integer(required=True, strict=True, validate=ID)
    classroom_id = fields.Integer(load_default=None, allow_none=True, strict=True, validate=ID)
    teacher_id = fields.Integer(load_default=None, allow_none=True, strict=True, validate=ID)
    subject = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=60))
    grade = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=60))
    district_id = fields.Integer(load_default=None, allow_none=True, strict=True, validate=ID)
    bureau_id = fields.Integer(load_default=None, allow_none=True, strict=True, validate=ID)
    keep = fields.Boolean(load_default=True)
    started_at = fields.AwareDateTime(required=True, default_timezone=None)
    ended_at = fields.AwareDateTime(load_default=None, allow_none=True)
    state = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=40))


class RecordingAvailable(RecordingStarted):
    ended_at = fields.AwareDateTime(required=True)
    duration_seconds = fields.Float(required=True, validate=validate.Range(min=0, max=MAX_DURATION_SECONDS))
    tracks = fields.List(fields.Nested(TrackIn), load_default=list, validate=validate.Length(max=16))
    files = fields.Nested(FilesIn, load_default=dict)
    gaps = fields.List(fields.Nested(GapIn), load_default=list, validate=validate.Length(max=1000))
    bytes = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=0))


# --- the HTTP API's bodies and queries -----------------------------------------------------------------

class ResourceQuery(StrictSchema):
    school_id = fields.Integer(load_default=None, validate=ID)
    teacher_id = fields.Integer(load_default=None, validate=ID)
    subject = fields.String(load_default=None, validate=SHORT)
    grade = fields.String(load_default=None, validate=SHORT)
    from_ = fields.Date(load_default=None, data_key="from")
    to = fields.Date(load_default=None)
    q = fields.String(load_default=None, validate=validate.Length(min=1, max=100))
    shared = fields.Boolean(load_default=None)
    limit = fields.Integer(load_default=DEFAULT_LIMIT, validate=validate.Range(min=1, max=MAX_LIMIT))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=1_000_000))

    @validates_schema
    def from_before_to(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if data.get("from_") and data.get("to") and data["from_"] > data["to"]:
            raise ValidationError("`from` is after `to`.", "from")


class ResourcePatch(StrictSchema):
    title = fields.String(validate=TEXT)
    subject = fields.String(allow_none=True, validate=SHORT)
    grade = fields.String(allow_none=True, validate=SHORT)
    shared = fields.Boolean(truthy={True}, falsy={False})  # JSON booleans only, not "yes" or 1
    kept = fields.Boolean(truthy={True}, falsy={False})

    @validates_schema
    def something(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if not data:
            raise ValidationError("Send at least one of title, subject, grade, shared, kept.", "_schema")


class ClipIn(StrictSchema):
    title = fields.String(required=True, validate=TEXT)
    start_seconds = Seconds(required=True, validate=validate.Range(min=0, max=MAX_DURATION_SECONDS))
    end_seconds = Seconds(required=True, validate=validate.Range(min=0, max=MAX_DURATION_SECONDS))

    @validates_schema
    def starts_before_it_ends(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if "start_seconds" in data and "end_seconds" in data and data["start_seconds"] >= data["end_seconds"]:
            raise ValidationError("A clip ends after it starts.", "end_seconds")
        # Clip bounds are written in URLs to the millisecond (services/common/playback_urls.py): a shorter clip
        # would be signed as start=600&end=600, which nginx cannot cut.
        if "start_seconds" in data and "end_seconds" in data and (
                data["end_seconds"] - data["start_seconds"] < MIN_CLIP_SECONDS):
            raise ValidationError(f"A clip lasts at least {MIN_CLIP_SECONDS:g} s.", "end_seconds")


class WatchIn(StrictSchema):
    target_kind = fields.String(required=True, validate=validate.OneOf(WATCH_TARGETS))
    target_id = fields.Integer(required=True, strict=True, validate=ID)
    # The teacher who watches, for a school's software acting for its teacher (tokens name no person):
    # a teacher's watch of a lesson is counted as a lesson observation.
    viewer_teacher_id = fields.Integer(load_default=None, allow_none=True, strict=True, validate=ID)


class HeartbeatIn(StrictSchema):
    seconds_watched = Seconds(required=True, validate=validate.Range(min=0, max=MAX_HEARTBEAT_SECONDS))


class RetentionIn(StrictSchema):
    days = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=MAX_RETENTION_DAYS))


class WatchQuery(StrictSchema):
    target_kind = fields.String(load_default=None, validate=validate.OneOf(WATCH_TARGETS))
    limit = fields.Integer(load_default=DEFAULT_LIMIT, validate=validate.Range(min=1, max=MAX_LIMIT))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=1_000_000))


# --- answers (documentation of the gateway's OpenAPI) --------------------------------------------------

class ClipOut(Schema):
    id = fields.Integer()
    title = fields.String()
    start_seconds = fields.Float()
    end_seconds = fields.Float()
    created_at = fields.String()


class ResourceOut(Schema):
    id = fields.Integer()
    title = fields.String()
    recording_key = fields.String()
    session_id = fields.Integer()
    session_kind = fields.String(allow_none=True)
    school_id = fields.Integer()
    classroom_id = fields.Integer(allow_none=True)
    teacher_id = fields.Integer(allow_none=True)
    subject = fields.String(allow_none=True)
    grade = fields.String(allow_none=True)
    date = fields.String()
    started_at = fields.String()
    duration_seconds = fields.Float()
    tracks = fields.List(fields.Dict())
    gaps = fields.List(fields.Dict())
    shared = fields.Boolean(truthy={True}, falsy={False})  # JSON booleans only, not "yes" or 1
    kept = fields.Boolean(truthy={True}, falsy={False})
    clips = fields.List(fields.Nested(ClipOut))


class ResourceList(Schema):
    items = fields.List(fields.Nested(ResourceOut))
    total = fields.Integer()


class PlaybackClip(Schema):
    id = fields.Integer()
    title = fields.String()
    start_seconds = fields.Float()
    end_seconds = fields.Float()
    url = fields.String()


class PlaybackOut(Schema):
    hls_url = fields.String()
    mp4_url = fields.String(allow_none=True)
    courseware_url = fields.String(allow_none=True)
    expires_at = fields.String()
    clips = fields.List(fields.Nested(PlaybackClip))


class PatrolSessionOut(Schema):
    session_id = fields.Integer()
    title = fields.String(allow_none=True)
    session_kind = fields.String(allow_none=True)
    school_id = fields.Integer()
    classroom_id = fields.Integer(allow_none=True)
    teacher_id = fields.Integer(allow_none=True)
    started_at = fields.String()
    recording_key = fields.String()
    live_url = fields.String()
    expires_at = fields.String()


class PatrolList(Schema):
    items = fields.List(fields.Nested(PatrolSessionOut))


class WatchOut(Schema):
    id = fields.String()
    heartbeat_seconds = fields.Integer()


class WatchRecord(Schema):
    id = fields.String()
    target_kind = fields.String()
    target_id = fields.Integer()
    school_id = fields.Integer()
    viewer = fields.String()
    viewer_teacher_id = fields.Integer(allow_none=True)
    counted_as = fields.String(metadata={"description": "lesson_observation, supervision (kept here) or none"})
    started_at = fields.String()
    ended_at = fields.String(allow_none=True)
    seconds_watched = fields.Float()
    activity_id = fields.String(allow_none=True)
    activity_state = fields.String()


class WatchList(Schema):
    items = fields.List(fields.Nested(WatchRecord))
    total = fields.Integer()


class RetentionOut(Schema):
    bureau_id = fields.Integer()
    days = fields.Integer()
    default = fields.Boolean()
