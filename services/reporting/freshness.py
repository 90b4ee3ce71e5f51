"""How fresh a report is: the time of the newest event the read models include, and what still waits.

Every report carries `freshness`: `as_of` (the newest applied event's time per source, and overall)
and `pending_events` (events published to reporting's queues and not yet applied; None when the
broker could not be asked). A clerk reads "final" as `pending_events == 0`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.subscriber import ReceivedEvent
from services.common.timeutil import as_utc
from services.reporting.models import projection_state


def _iso(moment: datetime | None) -> str | None:
    return as_utc(moment).isoformat().replace("+00:00", "Z") if moment is not None else None


def note_applied(session: Session, source: str, events: list[ReceivedEvent]) -> None:
    """Advance `source`'s "as of" to the newest of `events` (in the transaction that applied them)."""
    times = [moment for moment in (event.time for event in events) if moment is not None]
    if not times:
        return
    newest = max(times)
    row = session.execute(select(projection_state).where(projection_state.c.source == source)
                          .with_for_update()).mappings().first()
    if row is None:
        session.execute(projection_state.insert().values(
            source=source, newest_event_time=newest, events_applied=len(events)))
        return
    session.execute(projection_state.update().where(projection_state.c.source == source).values(
        newest_event_time=max(newest, as_utc(row["newest_event_time"])),
        events_applied=projection_state.c.events_applied + len(events)))


def newest_applied(session: Session) -> dict[str, datetime]:
    return {row.source: as_utc(row.newest_event_time) for row in session.execute(select(projection_state))}


def describe(session: Session, pending: Any) -> dict[str, Any]:
    """The `freshness` block of a report, read in the report's own snapshot.

    `pending` is the number of events waiting, counted *before* the report's snapshot was taken: an event
    applied in between is then counted as waiting though included (never "final" too early).
    """
    sources = newest_applied(session)
    activities = sources.get("activities")
    return {
        "as_of": _iso(activities),  # the newest activity the numbers include
        "as_of_by_source": {source: _iso(moment) for source, moment in sorted(sources.items())},
        "pending_events": pending if isinstance(pending, int) else None,
    }
