"""Who sees and changes which resource: the token's own scope, plus what alliance partners share.

- A bureau token sees its bureau's resources; a district token its schools'; a school token its own.
- A school in an alliance also sees the resources the other member schools marked `shared`; a district
  token sees what is shared with any of its schools. Alliances come from accounts' events (models.py).
- Changing (title, subject, grade, shared, kept, clips) needs a write token whose own scope covers the
  resource's school: the school itself or above. Partners may only look.
- Another bureau's resources, and partners' unshared ones, answer like missing ones.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_, select, true
from sqlalchemy.orm import Session

from services.common.scope import Scope
from services.resources.exceptions import Forbidden, NotFound
from services.resources.models import AllianceMember, LiveRecording, Resource, School


def covered_school_ids(session: Session, scope: Scope) -> set[int] | None:
    """The schools a token's own scope covers (None: a whole bureau)."""
    if scope.kind == "bureau":
        return None
    if scope.kind == "school":
        return {scope.id}
    if scope.kind == "district":
        known = set(session.scalars(select(School.id).where(
            School.district_id == scope.id, School.bureau_id == scope.bureau_id)))
        known |= set(session.scalars(select(Resource.school_id).distinct().where(
            Resource.district_id == scope.id, Resource.bureau_id == scope.bureau_id)))
        return known
    return set()


def alliance_partner_ids(session: Session, scope: Scope) -> set[int]:
    """Schools in an alliance with any school the scope covers (a bureau token needs none)."""
    covered = covered_school_ids(session, scope)
    if not covered:
        return set()
    alliances = select(AllianceMember.alliance_id).where(
        AllianceMember.school_id.in_(covered), AllianceMember.bureau_id == scope.bureau_id)
    return set(session.scalars(select(AllianceMember.school_id).where(AllianceMember.alliance_id.in_(alliances))))


def own_condition(scope: Scope, model: Any = Resource) -> ColumnElement[bool]:
    """The rows the token's own scope covers, as a WHERE clause on `model` (Resource or LiveRecording)."""
    in_bureau = model.bureau_id == scope.bureau_id
    if scope.kind == "bureau":
        return in_bureau
    if scope.kind == "district":
        return and_(in_bureau, model.district_id == scope.id)
    if scope.kind == "school":
        return and_(in_bureau, model.school_id == scope.id)
    return false()


def visible_condition(session: Session, scope: Scope) -> ColumnElement[bool]:
    """Resources a token may see: its own scope's, and what its alliance partners share."""
    partners = alliance_partner_ids(session, scope)
    shared = and_(Resource.shared == true(), Resource.school_id.in_(partners)) if partners else false()
    return and_(Resource.deleted_at.is_(None), or_(own_condition(scope), shared))


def may_change(scope: Scope, resource: Resource) -> bool:
    return scope.covers_school(resource.bureau_id, resource.district_id, resource.school_id)


def visible_resource(session: Session, scope: Scope, resource_id: int) -> Resource:
    """The resource if the token may see it; NotFound otherwise (missing and not-yours answer alike)."""
    found = session.scalar(select(Resource).where(Resource.id == int(resource_id), visible_condition(session, scope)))
    if found is None:
        raise NotFound(f"Resource {resource_id} does not exist or is not visible to this token's scope "
                       f"({scope.describe()}).")
    return found


def changeable_resource(session: Session, scope: Scope, resource_id: int) -> Resource:
    """The resource if the token may change it: a write token of its school or above."""
    resource = visible_resource(session, scope, resource_id)
    if not may_change(scope, resource):
        raise Forbidden(f"Resource {resource_id} is shared with this token's school by an alliance partner; "
                        "only its own school, district or bureau may change it.")
    scope.require_write()
    return resource


def live_condition(scope: Scope) -> ColumnElement[bool]:
    """Live recordings a token may patrol: its own scope's (live lessons are not shared with partners)."""
    return and_(LiveRecording.state == "recording", own_condition(scope, LiveRecording))
