"""Stream health and media time, from the data planes' statistics.

Each joined classroom's outputs (what it receives, one per track) are compared with what it should get;
transitions of a branch become `stream.degraded` / `stream.recovered` events in the outbox. Every
classroom's media time (`media_seconds`) grows while bytes flow to it or from it: credit for a lesson is
capped by it (services/activities/classroom.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.classroom_relay.lessons import event_routing
from services.classroom_relay.models import (
    LiveSession,
    SessionClassroom,
    outbox,
)
from services.classroom_relay.records import classroom_key, iso, session_key
from services.classroom_relay.relay_settings import RelaySettings
from services.common.timeutil import as_utc, utcnow

# A gap between two statistics longer than this (the control plane or data plane was away) counts only
# this much media time: nobody measured that the classroom carried media meanwhile.
MAX_MEDIA_STEP_SECONDS = 10.0


def stream_problems(
    outputs: Iterable[dict[str, Any]], sources: dict[tuple[str, str], dict[str, Any]], budget_bps: float,
    settings: RelaySettings,
) -> list[str]:
    """Why a classroom's reception is degraded (empty: it is fine). Loss counts only once a receiver has
    reported it (None before); a video output is below target when it gets less than a share of the
    lowest layer its source sends now."""
    problems: set[str] = set()
    if budget_bps < settings.branch_target_bps:
        problems.add("budget_below_target")
    for output in outputs:
        loss = output.get("loss_ratio")
        if loss is not None and loss >= settings.loss_degraded_ratio:
            problems.add("loss")
        source = sources.get((output.get("source_classroom", ""), output.get("track", "")))
        if output.get("kind", "video") != "video" or not source or not source.get("live"):
            continue
        rates = sorted(layer.get("rate_bytes_per_second", 0) * 8 for layer in source.get("layers", []))
        rates = [rate for rate in rates if rate > 0]
        sent_bps = output.get("send_rate_bytes_per_second", 0) * 8
        if rates and sent_bps < settings.rate_degraded_share * rates[0]:
            problems.add("below_target")
    return sorted(problems)


def _media_bytes(key: str, outputs: list[dict[str, Any]], published: list[dict[str, Any]]) -> int:
    received = sum(int(output.get("bytes_out", 0)) for output in outputs if output.get("classroom") == key)
    sent = sum(int(track.get("bytes_in", 0)) for track in published if track.get("classroom") == key)
    return received + sent


def _count_media_time(member: SessionClassroom, carried: int, now: datetime) -> None:
    previous = as_utc(member.media_checked_at)
    if previous is not None and carried > (member.media_bytes or 0):
        step = min((now - previous).total_seconds(), MAX_MEDIA_STEP_SECONDS)
        member.media_seconds = (member.media_seconds or 0.0) + max(0.0, step)
    member.media_bytes, member.media_checked_at = carried, now  # also after a data plane restart (counters at 0)


def record_stream_health(
    session: Session, stats: dict[str, Any], settings: RelaySettings, now: datetime | None = None
) -> list[str]:
    """Media time for every joined classroom; degraded/recovered events for branches whose state changed.

    Returns the routing keys added (for logging and tests). Only changes are published, and the state
    lives in the database, so several service instances or a restart do not repeat events.
    """
    now = now or utcnow()
    added = []
    by_key = dict((stats.get("sessions") or {}).items())
    query = select(SessionClassroom).join(LiveSession).where(
        LiveSession.status == "live", SessionClassroom.state == "joined"
    )
    for member in session.scalars(query):
        live = member.session
        found = by_key.get(session_key(live.id))
        if found is None:
            continue  # not pushed yet: nothing measured
        key = classroom_key(member.classroom_id)
        outputs = list(found.get("outputs") or [])
        published = list(found.get("tracks") or [])
        _count_media_time(member, _media_bytes(key, outputs, published), now)
        if member.role != "branch":
            continue
        mine = [output for output in outputs if output.get("classroom") == key]
        if not mine:
            continue
        sources = {(track.get("classroom", ""), track.get("track", "")): track for track in published}
        problems = stream_problems(mine, sources, member.downlink_bps, settings)
        state = "degraded" if problems else "ok"
        if state == member.stream_state:
            continue
        member.stream_state = state
        routing_key = "stream.degraded" if problems else "stream.recovered"
        reported = [output["loss_ratio"] for output in mine if output.get("loss_ratio") is not None]
        outbox.add(session, routing_key, {
            "session_id": live.id,
            "classroom_id": member.classroom_id,
            "school_id": member.classroom.school_id,
            "reasons": problems,
            "target_bps": settings.branch_target_bps,
            "budget_bps": member.downlink_bps,
            "send_rate_bps": int(sum(output.get("send_rate_bytes_per_second", 0) for output in mine) * 8),
            "loss_ratio": max(reported) if reported else None,
            "at": iso(now),
        }, **event_routing(live, member))
        added.append(routing_key)
    session.flush()
    return added
