"""`resource.published` on `resources.events`: a recorded lesson entered the library, or was shared.

Published when a resource is created (`shared_with_alliance: false`: its school, district and bureau
see it) and again each time it becomes shared with the school's alliance partners (`true`); subscribers
keep the latest per `resource_id`. Added to the outbox in the transaction that made the change.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.common.timeutil import utcnow
from services.resources.models import Resource, outbox

EVENT = "resource.published"


def published(session: Session, resource: Resource) -> str:
    moment = utcnow()
    return outbox.add(session, EVENT, {
        "resource_id": resource.id, "recording_key": resource.recording_key, "title": resource.title,
        "school_id": resource.school_id, "teacher_id": resource.teacher_id, "subject": resource.subject,
        "grade": resource.grade, "shared_with_alliance": bool(resource.shared),
        "published_at": moment.isoformat(),
    }, bureau_id=resource.bureau_id, subject=f"resource/{resource.id}", time=moment)
