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

# --- tracks: what a classroom publishes in a session ------------------------------------------------------
TRACK_KINDS = ("audio", "video")
AUDIO_CODECS = ("opus", "pcma", "pcmu", "aac")
VIDEO_CODECS = ("h264",)
MAX_TRACKS_PER_CLASSROOM = 4  # each receiving classroom reserves this many port pairs per source classroom
MAX_LAYERS = 4  # simulcast layers of one video track (one SSRC each)
TRACK_NAME = validate.Regexp(r"^[a-z0-9_-]{1,32}$", error="Use 1–32 of a–z, 0–9, '_' and '-'.")
AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
# What each codec is on the wire unless the track says otherwise (ffmpeg's defaults for its RTP muxer:
# 96 for the first dynamic video payload, 97 for audio; PCMA and PCMU have static types).
CODEC_DEFAULTS: dict[str, dict[str, int]] = {
    "opus": {"payload_type": 97, "clock_rate": 48000, "channels": 2, "bps": 64_000},
    "pcma": {"payload_type": 8, "clock_rate": 8000, "channels": 1, "bps": 80_000},  # 64 kbit/s + RTP/UDP/IP
    "pcmu": {"payload_type": 0, "clock_rate": 8000, "channels": 1, "bps": 80_000},
    "aac": {"payload_type": 97, "clock_rate": 48000, "channels": 2, "bps": 128_000},
    "h264": {"payload_type": 96, "clock_rate": 90000, "channels": 0, "bps": 0},
}
DEFAULT_CAMERA_BPS = 3 * MBIT
DEFAULT_COURSEWARE_BPS = 2 * MBIT


class TrackIn(StrictSchema):
    """One track a classroom publishes: audio (Opus, PCMA/PCMU, AAC) or H.264 video (camera, courseware, …).

    Unset fields take the codec's defaults (CODEC_DEFAULTS). `layers_bps`: a video track's simulcast layers,
    lowest first (one layer: no simulcast); `bps`: an audio track's rate. `config`: AAC's AudioSpecificConfig
    in hex (derived from clock_rate and channels for AAC-LC when not given).
    """

    track = fields.String(required=True, validate=TRACK_NAME)
    kind = fields.String(required=True, validate=validate.OneOf(TRACK_KINDS))
    source = fields.String(load_default=None, allow_none=True, validate=TRACK_NAME)
    codec = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(AUDIO_CODECS + VIDEO_CODECS))
    payload_type = fields.Integer(strict=True, load_default=None, allow_none=True, validate=validate.Range(0, 127))
    clock_rate = fields.Integer(strict=True, load_default=None, allow_none=True, validate=validate.Range(8000, 192000))
    channels = fields.Integer(strict=True, load_default=None, allow_none=True, validate=validate.Range(1, 8))
    config = fields.String(load_default=None, allow_none=True,
                           validate=validate.Regexp(r"^[0-9a-fA-F]{2,64}$", error="Hexadecimal digits."))
    bps = fields.Integer(strict=True, load_default=None, allow_none=True, validate=validate.Range(8_000, 2 * MBIT))
    layers_bps = fields.List(fields.Integer(strict=True, validate=BITRATE), load_default=None, allow_none=True,
                             validate=validate.Length(min=1, max=MAX_LAYERS))

    @validates_schema
    def _consistent(self, data: dict[str, Any], **_kwargs: Any) -> None:
        kind, codec = data["kind"], data.get("codec")
        if codec is not None and codec not in (AUDIO_CODECS if kind == "audio" else VIDEO_CODECS):
            allowed = AUDIO_CODECS if kind == "audio" else VIDEO_CODECS
            raise ValidationError(f"A {kind} track's codec is one of {', '.join(allowed)}.", "codec")
        if kind == "audio" and data.get("layers_bps") is not None:
            raise ValidationError("Audio has no simulcast layers; give its rate as bps.", "layers_bps")
        if kind == "video" and (data.get("bps") is not None or data.get("channels") is not None):
            raise ValidationError("A video track gives its rates as layers_bps (lowest first).", "bps")
        layers = data.get("layers_bps")
        if layers is not None and layers != sorted(set(layers)):
            raise ValidationError("Simulcast layers go lowest first, each faster than the one before.", "layers_bps")
        payload_type = data.get("payload_type")
        if payload_type is not None and payload_type not in (0, 8) and payload_type < 96:
            raise ValidationError("A payload type is 0 (PCMU), 8 (PCMA) or dynamic (96–127).", "payload_type")
        if data.get("config") is not None and codec != "aac":
            raise ValidationError("Only AAC (mpeg4-generic) carries a config.", "config")


TRACKS = fields.List(fields.Nested(TrackIn), load_default=None, allow_none=True,
                     validate=validate.Length(max=MAX_TRACKS_PER_CLASSROOM))


def _ipv4(value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError as error:
        raise ValidationError("Must be an IPv4 address.") from error


class ReceiveAddress(StrictSchema):
    """Where a room's receiving terminal listens for RTP; both or neither. `receive_port` is the base: the
    tracks it receives take consecutive even ports from it (RTCP on each port + 1)."""

    receive_host = fields.String(load_default=None, allow_none=True, validate=_ipv4)
    receive_port = fields.Integer(strict=True, load_default=None, allow_none=True, validate=PORT)
    # What the room publishes (null: the defaults for its role, audio Opus + camera H.264).
    tracks = TRACKS

    @validates_schema
    def _both_or_neither(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if (data.get("receive_host") is None) != (data.get("receive_port") is None):
            raise ValidationError("Give receive_host and receive_port together.", "receive_port")
        port = data.get("receive_port")
        if port is not None and port % 2:
            raise ValidationError("RTP takes an even port (RTCP the odd one above it).", "receive_port")
        names = [track["track"] for track in data.get("tracks") or []]
        if len(set(names)) != len(names):
            raise ValidationError("Each track needs its own name.", "tracks")


class ClassroomIn(ReceiveAddress):
    school_id = fields.Integer(required=True, strict=True, validate=ID)
    # Accounts owns schools: the relay takes bureau, district and link from it. Values given here must agree.
    bureau_id = fields.Integer(strict=True, load_default=None, allow_none=True, validate=ID)
    district_id = fields.Integer(strict=True, load_default=None, allow_none=True, validate=ID)
    school_link_capacity_bps = fields.Integer(strict=True, load_default=None, allow_none=True, validate=BITRATE)
    name = fields.String(required=True, validate=NAME)
    kind = fields.String(required=True, validate=validate.OneOf(CLASSROOM_KINDS))
    uplink_capacity_bps = fields.Integer(strict=True, load_default=None, allow_none=True, validate=BITRATE)
    downlink_capacity_bps = fields.Integer(strict=True, load_default=None, allow_none=True, validate=BITRATE)


def _label(longest: int) -> fields.String:
    return fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=longest))


def default_record(kind: str) -> bool:
    """Whether a session of `kind` is recorded unless it says: 专递课堂 and 名师课堂 yes, online research no."""
    return kind != "online_research"


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
    # Do branches answer back (audio + camera to the master)? Default: yes, except in a master-teacher
    # lesson without return_bps.
    interactive = fields.Boolean(load_default=None, allow_none=True)
    # What the master classroom publishes in this session (null: what it registered, else audio + camera).
    master_tracks = TRACKS
    # Keep each lesson as a recording (null: yes for dedicated delivery and master-teacher lessons, no for
    # online research); what the recording is filed under in the resource library.
    record = fields.Boolean(load_default=None, allow_none=True, truthy={True}, falsy={False})
    subject = _label(60)  # e.g. 数学 (the resources service files it with up to 60)
    grade = _label(32)  # e.g. 四年级

    @validates_schema
    def _timetable(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if data["ends_at"] <= data["starts_at"]:
            raise ValidationError("ends_at must be after starts_at.", "ends_at")
        if data["recurrence"] == "none" and data.get("recurrence_until") is not None:
            raise ValidationError("recurrence_until needs a recurrence.", "recurrence_until")
        until = data.get("recurrence_until")
        if until is not None and until < data["starts_at"]:
            raise ValidationError("recurrence_until is before the first lesson.", "recurrence_until")


class RecordingIn(StrictSchema):
    """Switch keeping a session's lessons as recordings on or off (takes effect at once while it is live)."""

    record = fields.Boolean(required=True, truthy={True}, falsy={False})  # JSON true or false, nothing else


class JoinIn(ReceiveAddress):
    teacher_id = fields.Integer(strict=True, load_default=None, allow_none=True, validate=ID)
    downlink_bps = fields.Integer(strict=True, load_default=None, allow_none=True, validate=BITRATE)
    return_bps = fields.Integer(
        strict=True, load_default=None, allow_none=True, validate=validate.Range(min=0, max=10_000 * MBIT)
    )


class TokenIn(StrictSchema):
    ttl_seconds = fields.Integer(strict=True, load_default=None, allow_none=True, validate=validate.Range(10, 86_400))


class SenderIn(StrictSchema):
    """An encoder's RTP source address for one track, registered so it needs no hello datagram; it replaces
    the track's earlier sender (an encoder restarting on a new port hands over this way)."""

    host = fields.String(required=True, validate=_ipv4)
    port = fields.Integer(required=True, strict=True, validate=PORT)
    # `camera`, or `camera:1` for a simulcast layer an encoder sends from its own port (layer slot 1..3).
    track = fields.String(load_default="camera", validate=validate.Regexp(
        r"^[a-z0-9_-]{1,32}(:[0-3])?$", error="A track name, optionally ':' and its layer slot 0–3."))


# --- what the relay returns (documented in the gateway's OpenAPI) ------------------------------------------


class ClassroomOut(Schema):
    id = fields.Integer()
    bureau_id = fields.Integer()
    district_id = fields.Integer(allow_none=True)
    school_id = fields.Integer()
    school_link_capacity_bps = fields.Integer()
    name = fields.String()
    kind = fields.String()
    uplink_capacity_bps = fields.Integer()
    downlink_capacity_bps = fields.Integer()
    receive_host = fields.String(allow_none=True)
    receive_port = fields.Integer(allow_none=True)


class TrackOut(Schema):
    track = fields.String()
    kind = fields.String()
    source = fields.String()
    codec = fields.String()
    payload_type = fields.Integer()
    clock_rate = fields.Integer()
    channels = fields.Integer()
    config = fields.String(allow_none=True)
    bps = fields.Integer()
    layers_bps = fields.List(fields.Integer(), allow_none=True)
    label = fields.String()  # classroom-<id>/<track>, as in the SDP's a=label


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
    tracks = fields.List(fields.Nested(TrackOut))
    media_seconds = fields.Float()  # how long the classroom really carried media in the live occurrence


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
    interactive = fields.Boolean()
    started_at = fields.String(allow_none=True)
    occurrences_held = fields.Integer()
    dataplane = fields.String(allow_none=True)  # the relay data plane forwarding it while live
    record = fields.Boolean()  # its lessons are kept as recordings
    subject = fields.String(allow_none=True)
    grade = fields.String(allow_none=True)
    # The recording of the live occurrence (patrol only when `record` is false); null when none runs.
    recording = fields.Nested(lambda: RecordingOut(), allow_none=True)
    classrooms = fields.List(fields.Nested(MemberOut))


class RecordingOut(Schema):
    id = fields.Integer()
    key = fields.String()  # rec-<id>: its folder under RECORDINGS_ROOT and its playback URLs
    keep = fields.Boolean()  # false: patrol only, nothing stays after the lesson
    state = fields.String()  # recording, ending, available, discarded, failed
    started_at = fields.String()
    duration_seconds = fields.Float()


class JoinTokenOut(Schema):
    token = fields.String()
    session = fields.String()
    classroom = fields.String()
    expires_at = fields.String()
    hello = fields.String()  # the camera track's hello (older encoders send the token alone)
    hellos = fields.Dict(keys=fields.String(), values=fields.String())  # per track: send from that track's RTP port
    dataplane = fields.String(allow_none=True)
    # [host, port] of the session's data plane; null until the session is live (placed).
    media_address = fields.List(fields.Raw(), allow_none=True)


class RtmpPublishOut(Schema):
    """Where a broadcasting classroom's recording host pushes RTMP (classroom equipment in: ingest_state.py)."""

    rtmp_url = fields.String()  # the server URL a recording host asks for ("服务器地址")
    stream_key = fields.String()  # its stream key ("串流密钥"): this classroom, this lesson, expires with it
    publish_url = fields.String()  # both in one, for hosts (and ffmpeg) that take a single URL
    expires_at = fields.String()


class SenderOut(Schema):
    classroom_id = fields.Integer()
    track = fields.String()
    address = fields.List(fields.Raw())
    expires_at = fields.String()


class SessionListQuery(StrictSchema):
    status = fields.String(load_default=None, validate=validate.OneOf(("scheduled", "live", "ended")))
