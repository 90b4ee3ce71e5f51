"""Retention: a bureau keeps recordings N days (its own setting, else RESOURCES_RETENTION_DAYS), unless `kept`.

The timer deletes an expired resource's files through the storage interface (services/common/storage.py)
and marks its row and its clips deleted; the row stays, so watches of it still name what was watched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.scope import Scope
from services.common.timeutil import utcnow
from services.common.validation import load
from services.resources import schemas
from services.resources.exceptions import Forbidden
from services.resources.models import Clip, Resource, Retention

RETENTION_IN = schemas.RetentionIn()
log = logging.getLogger(__name__)
BATCH = 200  # resources deleted per transaction; the timer goes on until none has expired


def retention_of(session: Session, bureau_id: int, default_days: int) -> dict[str, Any]:
    row = session.get(Retention, bureau_id)
    return {"bureau_id": bureau_id, "days": row.days if row else default_days, "default": row is None}


def get_retention(session: Session, scope: Scope, default_days: int) -> dict[str, Any]:
    return retention_of(session, scope.bureau_id, default_days)


def set_retention(session: Session, scope: Scope, data: Any, default_days: int) -> dict[str, Any]:
    values = load(RETENTION_IN, data)
    if scope.kind != "bureau":
        raise Forbidden("Only a bureau token sets how long its recordings are kept.")
    scope.require_write()
    row = session.get(Retention, scope.bureau_id)
    if row is None:
        session.add(Retention(bureau_id=scope.bureau_id, days=values["days"], updated_at=utcnow()))
    else:
        row.days, row.updated_at = values["days"], utcnow()
    session.flush()
    return retention_of(session, scope.bureau_id, default_days)


def expired(session: Session, default_days: int, now: datetime | None = None, limit: int = BATCH) -> list[Resource]:
    """Resources past their bureau's retention, not kept, not yet deleted (oldest first)."""
    now = now or utcnow()
    policies = {row.bureau_id: row.days for row in session.scalars(select(Retention))}
    bureaus = set(session.scalars(select(Resource.bureau_id).distinct().where(Resource.deleted_at.is_(None))))
    found: list[Resource] = []
    for bureau_id in sorted(bureaus):
        cutoff = now - timedelta(days=policies.get(bureau_id, default_days))
        found.extend(session.scalars(select(Resource).where(
            Resource.bureau_id == bureau_id, Resource.deleted_at.is_(None), Resource.kept.is_(False),
            Resource.ended_at < cutoff).order_by(Resource.ended_at).limit(limit - len(found))))
        if len(found) >= limit:
            break
    return found


def delete_expired(session: Session, delete_files: Callable[[str], Any], default_days: int,
                   now: datetime | None = None) -> list[str]:
    """Delete one batch of expired resources (files first, then the rows); the keys deleted."""
    now = now or utcnow()
    deleted = []
    for resource in expired(session, default_days, now):
        try:
            delete_files(resource.recording_key)
        except (OSError, ValueError) as error:  # ValueError: storage.BadKey (a link or a file in its place)
            # This one's row stays as it was (tried again next time); the others are deleted all the same.
            # Before, one such folder failed the whole batch on every run, oldest first: retention stopped.
            log.warning("retention: cannot delete the files of %s: %s", resource.recording_key, error)
            continue
        resource.deleted_at = now
        for clip in session.scalars(select(Clip).where(Clip.resource_id == resource.id, Clip.deleted_at.is_(None))):
            clip.deleted_at = now
        deleted.append(resource.recording_key)
    return deleted
