"""Tables owned by the resources service: the library, live recordings, the roster copy it needs, watches.

- `res_resources`, `res_clips`: finished recordings (from `recording.available`) and their clips; a
  resource removed by retention keeps its row with `deleted_at` (who watched it stays explainable).
- `res_live_recordings`: recordings running now (`recording.started` → `recording.ended`): the patrol list.
- `res_schools`, `res_alliance_members`: from accounts' events (`school.created`, `alliance.created`,
  `school.joined_alliance`): which district a school is in, which schools share with each other.
- `res_retention`: a bureau's retention in days (absent: the RESOURCES_RETENTION_DAYS default).
- `res_watches`: who watched which recording or live session for how long, and what it counted as.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Date, DateTime, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.db import service_metadata
from services.common.events import Outbox
from services.common.subscriber import ProcessedEvents

metadata = service_metadata()
# Payload schemas, named as in docs/events/asyncapi.yaml.
outbox = Outbox("resources", metadata, schemas={"resource.published": "resource_published"})
processed_events = ProcessedEvents(metadata)


class Base(DeclarativeBase):
    metadata = metadata


class Resource(Base):
    __tablename__ = "res_resources"
    __table_args__ = (Index("ix_res_resources_scope", "bureau_id", "school_id", "date"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recording_id: Mapped[int] = mapped_column(Integer, unique=True)
    recording_key: Mapped[str] = mapped_column(String(64), unique=True)
    bureau_id: Mapped[int] = mapped_column(Integer)
    district_id: Mapped[int | None] = mapped_column(Integer, index=True)
    school_id: Mapped[int] = mapped_column(Integer)
    classroom_id: Mapped[int | None] = mapped_column(Integer)
    teacher_id: Mapped[int | None] = mapped_column(Integer, index=True)
    session_id: Mapped[int] = mapped_column(Integer, index=True)
    session_kind: Mapped[str | None] = mapped_column(String(60))
    title: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str | None] = mapped_column(String(60))
    grade: Mapped[str | None] = mapped_column(String(60))
    date: Mapped[date] = mapped_column(Date)  # the lesson's local date (the bureau's time zone)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_seconds: Mapped[float] = mapped_column(Float)
    tracks: Mapped[list[Any]] = mapped_column(JSON)
    gaps: Mapped[list[Any]] = mapped_column(JSON)
    files: Mapped[dict[str, Any]] = mapped_column(JSON)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    kept: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)


class Clip(Base):
    __tablename__ = "res_clips"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("res_resources.id"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    start_seconds: Mapped[float] = mapped_column(Float)
    end_seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LiveRecording(Base):
    __tablename__ = "res_live_recordings"
    recording_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    recording_key: Mapped[str] = mapped_column(String(64))
    bureau_id: Mapped[int] = mapped_column(Integer, index=True)
    district_id: Mapped[int | None] = mapped_column(Integer)
    school_id: Mapped[int] = mapped_column(Integer)
    classroom_id: Mapped[int | None] = mapped_column(Integer)
    teacher_id: Mapped[int | None] = mapped_column(Integer)
    session_id: Mapped[int] = mapped_column(Integer, index=True)
    session_kind: Mapped[str | None] = mapped_column(String(60))
    title: Mapped[str | None] = mapped_column(String(200))
    subject: Mapped[str | None] = mapped_column(String(60))
    grade: Mapped[str | None] = mapped_column(String(60))
    keep: Mapped[bool] = mapped_column(Boolean, default=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(40))  # recording | ended (finalizing) | available


class School(Base):
    __tablename__ = "res_schools"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    bureau_id: Mapped[int] = mapped_column(Integer)
    district_id: Mapped[int | None] = mapped_column(Integer, index=True)


class AllianceMember(Base):
    __tablename__ = "res_alliance_members"
    alliance_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    school_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False, index=True)
    bureau_id: Mapped[int] = mapped_column(Integer)


class Retention(Base):
    __tablename__ = "res_retention"
    bureau_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    days: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Watch(Base):
    __tablename__ = "res_watches"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    bureau_id: Mapped[int] = mapped_column(Integer, index=True)
    # Who: the token's scope (kind and id) and, for a school's software, the teacher it names.
    viewer_kind: Mapped[str] = mapped_column(String(20))
    viewer_id: Mapped[int] = mapped_column(Integer)
    viewer_teacher_id: Mapped[int | None] = mapped_column(Integer)
    target_kind: Mapped[str] = mapped_column(String(20))
    target_id: Mapped[int] = mapped_column(Integer)
    recording_key: Mapped[str] = mapped_column(String(64))
    school_id: Mapped[int] = mapped_column(Integer)  # the watched lesson's school
    counted_as: Mapped[str] = mapped_column(String(30))  # lesson_observation | supervision | none
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    end_reason: Mapped[str | None] = mapped_column(String(20))  # ended | silent
    seconds_watched: Mapped[float] = mapped_column(Float, default=0.0)
    # The activity a counted watch became: none | pending | recorded | too_short | refused
    activity_state: Mapped[str] = mapped_column(String(20), index=True)
    activity_id: Mapped[str | None] = mapped_column(String(36))
    activity_note: Mapped[str | None] = mapped_column(String(500))
    # The caller's signed scope, kept so a watch ended by silence can still be recorded for it (a few minutes).
    caller_scope: Mapped[dict[str, Any] | None] = mapped_column(JSON)
