"""Accounts owns the bureau's organisation: districts, schools, alliances, teachers, groups, tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from services.accounts.schemas import DEFAULT_SCHOOL_LINK_BPS
from services.common.db import service_metadata
from services.common.events import Outbox

metadata = service_metadata()
outbox = Outbox("accounts", metadata)


class Base(DeclarativeBase):
    metadata = metadata


class Bureau(Base):
    __tablename__ = "bureaus"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="Asia/Shanghai")


class District(Base):
    __tablename__ = "districts"
    __table_args__ = (UniqueConstraint("bureau_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    bureau_id: Mapped[int] = mapped_column(ForeignKey("bureaus.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    hub_school_id: Mapped[int | None] = mapped_column(Integer)


class School(Base):
    __tablename__ = "schools"
    __table_args__ = (UniqueConstraint("bureau_id", "code"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    bureau_id: Mapped[int] = mapped_column(ForeignKey("bureaus.id"), index=True)
    district_id: Mapped[int | None] = mapped_column(ForeignKey("districts.id"), index=True)
    code: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20), default="ordinary")
    link_capacity_bps: Mapped[int] = mapped_column(BigInteger, default=DEFAULT_SCHOOL_LINK_BPS)


class Alliance(Base):
    __tablename__ = "alliances"
    __table_args__ = (UniqueConstraint("bureau_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    bureau_id: Mapped[int] = mapped_column(ForeignKey("bureaus.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    lead_school_id: Mapped[int] = mapped_column(ForeignKey("schools.id"))
    members: Mapped[list[AllianceMember]] = relationship(cascade="all, delete-orphan", lazy="selectin")


class AllianceMember(Base):
    __tablename__ = "alliance_members"
    alliance_id: Mapped[int] = mapped_column(ForeignKey("alliances.id"), primary_key=True)
    school_id: Mapped[int] = mapped_column(ForeignKey("schools.id"), primary_key=True)


class Teacher(Base):
    __tablename__ = "teachers"
    __table_args__ = (UniqueConstraint("school_id", "staff_number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    school_id: Mapped[int] = mapped_column(ForeignKey("schools.id"), index=True)
    staff_number: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str | None] = mapped_column(String(60))
    grade: Mapped[str | None] = mapped_column(String(60))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    roles: Mapped[list[TeacherRole]] = relationship(cascade="all, delete-orphan", lazy="selectin")


class TeacherRole(Base):
    __tablename__ = "teacher_roles"
    teacher_id: Mapped[int] = mapped_column(ForeignKey("teachers.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(40), primary_key=True)


class Group(Base):
    """A research group (one school), a cross-school collaboration group or a master-teacher studio."""

    __tablename__ = "groups"
    __table_args__ = (UniqueConstraint("bureau_id", "kind", "school_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    bureau_id: Mapped[int] = mapped_column(ForeignKey("bureaus.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    school_id: Mapped[int | None] = mapped_column(ForeignKey("schools.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str | None] = mapped_column(String(60))
    grade: Mapped[str | None] = mapped_column(String(60))
    leader_id: Mapped[int | None] = mapped_column(ForeignKey("teachers.id"))
    members: Mapped[list[GroupMember]] = relationship(cascade="all, delete-orphan", lazy="selectin")


class GroupMember(Base):
    __tablename__ = "group_members"
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"), primary_key=True)
    teacher_id: Mapped[int] = mapped_column(ForeignKey("teachers.id"), primary_key=True, index=True)


class ApiToken(Base):
    """A bearer token: only its SHA-256 is stored; `prefix` lets people tell tokens apart."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(200))
    bureau_id: Mapped[int] = mapped_column(ForeignKey("bureaus.id"), index=True)
    scope_kind: Mapped[str] = mapped_column(String(20))
    scope_id: Mapped[int] = mapped_column(Integer)
    access: Mapped[str] = mapped_column(String(10), default="read")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
