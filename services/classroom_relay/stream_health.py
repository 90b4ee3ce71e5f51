"""Stream health: the data planes' stats compared with what each live branch should get; transitions
become `stream.degraded` / `stream.recovered` events in the outbox.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.classroom_relay.lessons import subject
from services.classroom_relay.models import (
    LiveSession,
    SessionClassroom,
    outbox,
)
from services.classroom_relay.records import classroom_key, iso, session_key
from services.classroom_relay.relay_settings import RelaySettings
from services.common.timeutil import utcnow


def stream_problems(output: dict[str, Any], source: dict[str, Any] | None, settings: RelaySettings) -> list[str]:
    """Why a branch's stream is degraded (empty: it is fine). Compares what it gets with what it could get."""
    problems = []
    if output.get("loss_ratio", 0.0) >= settings.loss_degraded_ratio:
        problems.append("loss")
    budget_bps = output.get("budget_bytes_per_second", 0) * 8
    if budget_bps < settings.branch_target_bps:
        problems.append("budget_below_target")
    if source and source.get("live"):
        # The best the branch could get: the highest layer that fits both its budget and the target.
        cap = min(budget_bps, settings.branch_target_bps)
        rates = sorted(layer["rate_bytes_per_second"] * 8 for layer in source.get("layers", []))
        fitting = [rate for rate in rates if rate <= cap]
        expected = fitting[-1] if fitting else (rates[0] if rates else 0.0)
        sent_bps = output.get("send_rate_bytes_per_second", 0) * 8
        if expected > 0 and sent_bps < settings.rate_degraded_share * expected:
            problems.append("below_target")
    return problems


def record_stream_health(
    session: Session, stats: dict[str, Any], settings: RelaySettings, now: datetime | None = None
) -> list[str]:
    """Compare the data plane's stats with each joined branch; publish degraded/recovered on changes.

    Returns the routing keys added (for logging and tests). Only changes are published, and the state
    lives in the database, so several service instances or a restart do not repeat events.
    """
    now = now or utcnow()
    added = []
    by_key = {key: value for key, value in (stats.get("sessions") or {}).items()}
    query = select(SessionClassroom).join(LiveSession).where(
        LiveSession.status == "live", SessionClassroom.state == "joined", SessionClassroom.role == "branch"
    )
    for member in session.scalars(query):
        live = member.session
        found = by_key.get(session_key(live.id))
        if found is None:
            continue  # not pushed yet: nothing measured
        output = next(
            (item for item in found.get("outputs", [])
             if item.get("classroom") == classroom_key(member.classroom_id)
             and item.get("source_classroom") == classroom_key(live.master_classroom_id)),
            None,
        )
        if output is None:
            continue
        source = (found.get("tracks") or {}).get(classroom_key(live.master_classroom_id))
        problems = stream_problems(output, source, settings)
        state = "degraded" if problems else "ok"
        if state == member.stream_state:
            continue
        member.stream_state = state
        routing_key = "stream.degraded" if problems else "stream.recovered"
        outbox.add(session, routing_key, {
            "session_id": live.id,
            "classroom_id": member.classroom_id,
            "school_id": member.classroom.school_id,
            "reasons": problems,
            "target_bps": settings.branch_target_bps,
            "budget_bps": int(output.get("budget_bytes_per_second", 0) * 8),
            "send_rate_bps": int(output.get("send_rate_bytes_per_second", 0) * 8),
            "loss_ratio": output.get("loss_ratio", 0.0),
            "at": iso(now),
        }, subject=subject(live, member))
        added.append(routing_key)
    session.flush()
    return added
