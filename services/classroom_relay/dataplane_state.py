"""What each data plane should be doing (the `set_state` pushed by dataplane_client.py), and its stats
read back: outputs by (session, classroom) key, and the labels of the live-session gauge.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.classroom_relay.models import (
    LiveSession,
)
from services.classroom_relay.records import classroom_key, master_member, session_key
from services.classroom_relay.relay_settings import RelaySettings


def desired_state(session: Session, settings: RelaySettings, dataplane: str | None = None) -> dict[str, Any]:
    """Everything a data plane should forward now, for one idempotent `set_state`: the live sessions
    placed on `dataplane` (None: all live sessions)."""
    entries = []
    query = select(LiveSession).where(LiveSession.status == "live").order_by(LiveSession.id)
    if dataplane is not None:
        query = query.where(LiveSession.dataplane == dataplane)
    for live in session.scalars(query):
        master = master_member(live)
        return_address = (
            [master.receive_host, master.receive_port] if master.receive_host and master.receive_port else None
        )
        branches, senders = [], []
        for member in live.members:
            if member.state != "joined":
                continue
            if member.sender_host and member.sender_token:
                senders.append({"classroom": classroom_key(member.classroom_id), "token": member.sender_token,
                                "address": [member.sender_host, member.sender_port]})
            if member.role != "branch":
                continue
            branch: dict[str, Any] = {
                "classroom": classroom_key(member.classroom_id),
                "address": [member.receive_host, member.receive_port],
                "budget_bytes_per_second": member.downlink_bps / 8,
            }
            if member.return_bps and return_address:
                branch["uplink_budget_bytes_per_second"] = member.return_bps / 8
                branch["return_address"] = return_address
            branches.append(branch)
        entries.append({"session": session_key(live.id), "master": classroom_key(master.classroom_id),
                        "branches": branches, "senders": senders})
    return {"secrets": settings.join_secrets, "sessions": entries}



def live_session_labels(session: Session) -> list[dict[str, str]]:
    """Who is master of each live session, where, and for which school: the labels of the
    `lianxiao_relay_session_info` gauge, in the data plane's own keys so rules can join on them."""
    query = select(LiveSession).where(LiveSession.status == "live").order_by(LiveSession.id)
    labels = []
    for live in session.scalars(query):
        master = master_member(live)
        labels.append({
            "session": session_key(live.id),
            "dataplane": live.dataplane or "",
            "master_classroom": classroom_key(master.classroom_id),
            "master_school": str(master.classroom.school_id),
        })
    return labels


def outputs_by_key(stats: dict[str, Any] | None) -> dict[tuple[str, str], dict]:
    """The data plane's downstream outputs by (session key, branch classroom key)."""
    found: dict[tuple[str, str], dict] = {}
    for key, entry in ((stats or {}).get("sessions") or {}).items():
        master = entry.get("master")
        for output in entry.get("outputs", []):
            if output.get("source_classroom") == master:
                found[(key, output["classroom"])] = output
    return found
