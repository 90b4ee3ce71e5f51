"""Tables owned by the activities service: the activity log, its local roster, processed event ids.

Activities never reads accounts' tables: it keeps the few facts it needs about teachers (school,
district, bureau, groups, roles) from accounts' `teacher.*` events, like any other subscriber.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    Numeric,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.db import service_metadata
from services.common.events import Outbox
from services.common.subscriber import ProcessedEvents

metadata = service_metadata()
# Payload schemas, named as in docs/events/asyncapi.yaml.
outbox = Outbox("activities", metadata, schemas={
    "activity.recorded": "activity_statement", "activity.corrected": "activity_statement",
    "activity.hidden": "hidden_statement"})
processed_events = ProcessedEvents(metadata)

# SQLite only auto-increments an INTEGER primary key; PostgreSQL gets a 64-bit sequence.
SEQUENCE_TYPE = BigInteger().with_variant(Integer, "sqlite")
HOURS_TYPE = Numeric(7, 2)


class Base(DeclarativeBase):
    metadata = metadata


class Activity(Base):
    """One recorded fact. Never updated in content: hiding and superseding only add markers."""

    __tablename__ = "activities"
    __table_args__ = (
        Index("ix_activities_school_sequence", "school_id", "sequence"),
        Index("ix_activities_teacher_occurred", "teacher_id", "occurred_at"),
    )

    # The stable cursor and the order of the log.
    sequence: Mapped[int] = mapped_column(SEQUENCE_TYPE, primary_key=True, autoincrement=True)
    # The client-supplied (or generated) UUID; also the xAPI statement id.
    id: Mapped[str] = mapped_column(String(36), unique=True)
    kind: Mapped[str] = mapped_column(String(60), index=True)
    # The UUID of what the statement is about: itself, or (for a comment) the activity commented on.
    object_id: Mapped[str] = mapped_column(String(36), index=True)
    teacher_id: Mapped[int] = mapped_column(Integer)
    school_id: Mapped[int] = mapped_column(Integer)
    district_id: Mapped[int | None] = mapped_column(Integer)
    bureau_id: Mapped[int] = mapped_column(Integer, index=True)
    group_id: Mapped[int | None] = mapped_column(Integer, index=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    duration_minutes: Mapped[int] = mapped_column(Integer, default=0)
    online_hours: Mapped[Decimal] = mapped_column(HOURS_TYPE, default=Decimal(0))
    offline_hours: Mapped[Decimal] = mapped_column(HOURS_TYPE, default=Decimal(0))
    details: Mapped[str] = mapped_column(Text)  # JSON of the kind's own validated fields
    # SHA-256 of the canonical validated content: xAPI's "same id, same content" test.
    content_hash: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    recorded_by: Mapped[str] = mapped_column(String(100))
    corrects_id: Mapped[str | None] = mapped_column(String(36), index=True)
    superseded_by_id: Mapped[str | None] = mapped_column(String(36))
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    hidden_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    hidden_by_teacher_id: Mapped[int | None] = mapped_column(Integer)
    hidden_reason: Mapped[str | None] = mapped_column(String(500))
    hidden_statement_id: Mapped[str | None] = mapped_column(String(36))


class RosterTeacher(Base):
    """What accounts announced about a teacher (no names: accounts keeps those)."""

    __tablename__ = "roster_teachers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    school_id: Mapped[int] = mapped_column(Integer, index=True)
    district_id: Mapped[int | None] = mapped_column(Integer)
    bureau_id: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    roles: Mapped[str] = mapped_column(Text, default="[]")  # JSON list
    group_ids: Mapped[str] = mapped_column(Text, default="[]")  # JSON list
    # Events may arrive out of order; an older announcement never overwrites a newer one.
    announced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
