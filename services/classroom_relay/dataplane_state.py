"""What each data plane should be doing (the `set_state` pushed by dataplane_client.py), and its stats
read back: outputs by (session, classroom) key, and the labels of the live-session gauge.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.classroom_relay import lessons, recordings, tracks
from services.classroom_relay.models import (
    LiveSession,
    Recording,
)
from services.classroom_relay.records import classroom_key, master_member, session_key
from services.classroom_relay.relay_settings import RelaySettings


def _wire_track(track: dict[str, Any]) -> dict[str, Any]:
    return {key: track[key] for key in ("track", "kind", "source", "clock_rate", "codec", "payload_type",
                                         "channels", "layers_bps", "bps")}


def session_state(live: LiveSession, recording: Recording | None = None) -> dict[str, Any]:
    """One live session in the data plane's terms (protocol 2): each joined classroom, the tracks it
    publishes, where it receives each track of every other classroom it hears (tracks.py), its budget, and
    its registered senders; and, while `recording` runs, the recorder as a receive-only member
    (recordings.recorder_member: not a classroom, not counted on any school's link)."""
    joined = [member for member in live.members if member.state == "joined"]
    routing = lessons.routing_members(joined, ("joined",))
    by_id = {member.classroom_id: member for member in routing}
    members = []
    for member in joined:
        entry: dict[str, Any] = {
            "classroom": classroom_key(member.classroom_id),
            "tracks": [_wire_track(track) for track in member.tracks or []],
            "senders": [{"track": sender["track"], "token": sender["token"],
                         "address": [sender["host"], sender["port"]]} for sender in member.senders or []],
        }
        if member.receive_host and member.receive_port:
            outputs = tracks.outputs_for(live.kind, by_id[member.classroom_id], routing, member.receive_port)
            if outputs:
                entry["receive"] = {
                    "host": member.receive_host,
                    "budget_bytes_per_second": lessons.receive_budget_bps(live, member, routing) / 8,
                    "outputs": [{"source_classroom": classroom_key(output.source_classroom_id),
                                 "track": output.track["track"], "port": output.port} for output in outputs],
                }
        members.append(entry)
    recorder = recordings.recorder_member(live, recording) if recording is not None else None
    if recorder is not None:
        members.append(recorder)
    return {"session": session_key(live.id), "members": members}


def desired_state(session: Session, settings: RelaySettings, dataplane: str | None = None) -> dict[str, Any]:
    """Everything a data plane should forward now, for one idempotent `set_state`: the live sessions
    placed on `dataplane` (None: all live sessions)."""
    query = select(LiveSession).where(LiveSession.status == "live").order_by(LiveSession.id)
    if dataplane is not None:
        query = query.where(LiveSession.dataplane == dataplane)
    running = recordings.running_by_session(session, dataplane)
    return {"secrets": settings.join_secrets,
            "sessions": [session_state(live, running.get(live.id)) for live in session.scalars(query)]}


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


OutputKey = tuple[str, str, str, str]  # session, receiving classroom, source classroom, track


def outputs_by_key(
    stats: dict[str, Any] | None, confirmed: list[dict[str, Any]] | None = None
) -> dict[OutputKey, dict]:
    """The data plane's outputs by (session, receiver, source classroom, track): from the last set_state
    reply (`confirmed`, known at once) overlaid with the latest get_stats (counters, loss, jitter)."""
    found: dict[OutputKey, dict] = {}
    for output in confirmed or []:
        found[(output["session"], output["classroom"], output["source_classroom"], output["track"])] = dict(output)
    for key, entry in ((stats or {}).get("sessions") or {}).items():
        for output in entry.get("outputs", []):
            output_key = (key, output["classroom"], output.get("source_classroom", ""), output.get("track", "camera"))
            found[output_key] = {**found.get(output_key, {}), **output, "session": key}
    return found
