"""Tables owned by the classroom_relay service: its copy of schools' links, classrooms, sessions.

The relay does not read accounts' tables. A school's bureau, district and link capacity are asked of
accounts (`school_facts`) whenever one of its classrooms is registered and kept here, so admission control
never needs a remote call while it holds its locks.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# The constants live in the face (schemas.py) so other processes can read them without the tables;
# they stay importable from here for the relay's own modules.
from services.classroom_relay.schemas import (  # noqa: F401
    CLASSROOM_KINDS,
    DEFAULT_DOWNLINK_BPS,
    DEFAULT_MASTER_SCHOOL_LINK_BPS,
    DEFAULT_RETURN_BPS,
    DEFAULT_SOURCE_BPS,
    DEFAULT_UPLINK_BPS,
    MBIT,
    MEMBER_STATES,
    RECURRENCES,
    ROLES,
    SESSION_KINDS,
    SESSION_STATUSES,
    STREAM_STATES,
)
from services.common.events import Outbox

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)
# Payload schemas, named as in docs/events/asyncapi.yaml.
outbox = Outbox("classroom_relay", metadata, schemas={
    "session": "session_classroom", "classroom": "session_classroom", "stream": "stream_quality",
    "recording.started": "recording_started", "recording.ended": "recording_ended",
    "recording.available": "recording_available"})


class Base(DeclarativeBase):
    metadata = metadata


class RelaySchool(Base):
    """The relay's copy of what it needs about a school (id as in accounts)."""

    __tablename__ = "relay_schools"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    bureau_id: Mapped[int] = mapped_column(Integer, index=True)
    district_id: Mapped[int | None] = mapped_column(Integer)
    link_capacity_bps: Mapped[int] = mapped_column(BigInteger)


class Classroom(Base):
    __tablename__ = "classrooms"
    __table_args__ = (UniqueConstraint("school_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    school_id: Mapped[int] = mapped_column(ForeignKey("relay_schools.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    uplink_capacity_bps: Mapped[int] = mapped_column(BigInteger, default=DEFAULT_UPLINK_BPS)
    downlink_capacity_bps: Mapped[int] = mapped_column(BigInteger, default=DEFAULT_DOWNLINK_BPS)
    # Where the room's receiving terminal listens for RTP (RTCP on port + 1), if it is fixed.
    receive_host: Mapped[str | None] = mapped_column(String(64))
    receive_port: Mapped[int | None] = mapped_column(Integer)
    # What the room publishes when a session does not say (tracks.py shapes); None: its role's defaults.
    tracks: Mapped[list | None] = mapped_column(JSON)
    school: Mapped[RelaySchool] = relationship(lazy="joined")


class LiveSession(Base):
    """A scheduled lesson or research meeting; recurring ones go back to `scheduled` after each end."""

    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))
    title: Mapped[str] = mapped_column(String(200))
    master_classroom_id: Mapped[int] = mapped_column(ForeignKey("classrooms.id"), index=True)
    teacher_id: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="scheduled", index=True)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    recurrence: Mapped[str] = mapped_column(String(20), default="none")
    recurrence_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    source_bps: Mapped[int] = mapped_column(BigInteger)
    branch_bps: Mapped[int | None] = mapped_column(BigInteger)  # None: each branch's downlink capacity
    return_bps: Mapped[int] = mapped_column(BigInteger)
    interactive: Mapped[bool] = mapped_column(Boolean, default=True)  # branches send audio + camera back
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # of the live occurrence
    occurrences_held: Mapped[int] = mapped_column(Integer, default=0)
    # The data plane forwarding the live occurrence (placement.py); None while not live.
    dataplane: Mapped[str | None] = mapped_column(String(63), index=True)
    # Kept as a recording (recordings.py); the recorder is beside every live session anyway, for patrol.
    record: Mapped[bool] = mapped_column(Boolean, default=True)
    subject: Mapped[str | None] = mapped_column(String(64))
    grade: Mapped[str | None] = mapped_column(String(32))
    members: Mapped[list[SessionClassroom]] = relationship(
        back_populates="session", lazy="selectin", order_by="SessionClassroom.slot"
    )
    running_recording: Mapped[Recording | None] = relationship(
        primaryjoin="and_(LiveSession.id == Recording.session_id, Recording.state == 'recording')",
        viewonly=True, uselist=False,
    )


class SessionClassroom(Base):
    """A classroom in a session and the bandwidth committed for it while it is `joined`."""

    __tablename__ = "session_classrooms"
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    classroom_id: Mapped[int] = mapped_column(ForeignKey("classrooms.id"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(10))
    teacher_id: Mapped[int | None] = mapped_column(Integer)  # master: the session's; branch: the supervisor
    state: Mapped[str] = mapped_column(String(10), default="planned", index=True)
    downlink_bps: Mapped[int] = mapped_column(BigInteger, default=0)  # relay → branch
    return_bps: Mapped[int] = mapped_column(BigInteger, default=0)  # branch camera → master room
    source_bps: Mapped[int] = mapped_column(BigInteger, default=0)  # master room → relay
    receive_host: Mapped[str | None] = mapped_column(String(64))
    receive_port: Mapped[int | None] = mapped_column(Integer)
    # Fixed when the classroom is added: orders the port pairs other classrooms receive its tracks on.
    slot: Mapped[int] = mapped_column(Integer, default=0)
    tracks: Mapped[list] = mapped_column(JSON, default=list)  # what it publishes in this session
    # Registered encoder source addresses, one per track: [{track, host, port, token}].
    senders: Mapped[list] = mapped_column(JSON, default=list)
    # How long it really carried media in the live occurrence (stream_health.py), and what was seen last.
    media_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    media_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    media_checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    joined_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    left_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stream_state: Mapped[str] = mapped_column(String(10), default="ok")
    session: Mapped[LiveSession] = relationship(back_populates="members")
    classroom: Mapped[Classroom] = relationship(lazy="joined")


ACTIVE = text("state = 'recording'")


class Recording(Base):
    """One recording of one live occurrence (recordings.py): key `rec-<id>` on the recorder beside the
    session's data plane, which receives the master's tracks on `base_port + 2*i`."""

    __tablename__ = "relay_recordings"
    __table_args__ = (
        # One running recording per session, and a port block used by one running recording per recorder,
        # even when two control-plane replicas reconcile at once.
        Index("uq_relay_recordings_running_session", "session_id", unique=True,
              postgresql_where=ACTIVE, sqlite_where=ACTIVE),
        Index("uq_relay_recordings_running_ports", "recorder", "base_port", unique=True,
              postgresql_where=ACTIVE, sqlite_where=ACTIVE),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    recorder: Mapped[str] = mapped_column(String(63))  # the data plane it sits beside
    media_host: Mapped[str] = mapped_column(String(64))
    base_port: Mapped[int] = mapped_column(Integer)
    keep: Mapped[bool] = mapped_column(Boolean)
    # recording → ending (the recorder finalizes) → available | discarded (keep false) | failed
    state: Mapped[str] = mapped_column(String(16), index=True, default="recording")
    recorder_state: Mapped[str | None] = mapped_column(String(32))  # what the recorder said last
    bureau_id: Mapped[int] = mapped_column(Integer)
    facts: Mapped[dict] = mapped_column(JSON)  # who and what, as when it started (the events' common part)
    tracks: Mapped[list] = mapped_column(JSON, default=list)  # [{track, kind, source, codec, port}]
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    available_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    segments: Mapped[int] = mapped_column(Integer, default=0)
    last_segment_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    gaps: Mapped[list] = mapped_column(JSON, default=list)
    files: Mapped[dict] = mapped_column(JSON, default=dict)
    session: Mapped[LiveSession] = relationship()
