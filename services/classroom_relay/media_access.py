"""Media access: join tokens for classrooms, senders registered per track, every classroom's SDP.

The token format is the data plane's (dataplane/admission.py verifies it on every hello).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from services.classroom_relay import schemas, tracks
from services.classroom_relay.dataplane.admission import issue_token, verify_token
from services.classroom_relay.dataplane_state import OutputKey
from services.classroom_relay.exceptions import (
    Conflict,
    DataPlaneUnavailable,
    Forbidden,
    NotFound,
)
from services.classroom_relay.lessons import current_occurrence, routing_members
from services.classroom_relay.records import (
    classroom_key,
    covers,
    find_member,
    get_live_session,
    iso,
    require_id,
    session_key,
)
from services.classroom_relay.relay_settings import RelaySettings
from services.classroom_relay.sdp import Section, build_receiver_sdp
from services.classroom_relay.tracks import label
from services.common.scope import Scope
from services.common.timeutil import utcnow
from services.common.validation import load

TOKEN_SLACK = timedelta(minutes=15)  # join tokens outlive the lesson's end by this much
MAX_TOKEN_TTL_SECONDS = 86_400



def sender_names(published: list[dict[str, Any]]) -> list[str]:
    """The senders a classroom's tracks admit: each track, and `track:slot` for each further simulcast layer."""
    names = []
    for track in published:
        names.append(track["track"])
        names += [f"{track['track']}:{slot}" for slot in range(1, len(track.get("layers_bps") or []))]
    return names


def issue_join_token(
    session: Session, scope: Scope, session_id: Any, classroom_id: Any, data: dict[str, Any] | None,
    settings: RelaySettings, now: datetime | None = None, media_addresses: Mapping[str, list] | None = None,
) -> dict[str, Any]:
    """A signed token for one classroom of one session; its encoder sends `hello` from its RTP port.

    `media_addresses` (data plane name → [host, port]) gives the address of the data plane the session
    is placed on; a session that is not live yet has none (fetch the token again once it started).
    """
    values = load(schemas.TokenIn(), data or {})
    now = now or utcnow()
    live = get_live_session(session, scope, session_id)
    member = find_member(live, require_id(classroom_id, "Classroom"))
    if member is None or member.state == "left":
        raise NotFound(f"Classroom {classroom_id} is not in session {live.id}.")
    scope.require_write()
    if not covers(scope, member.classroom):
        raise Forbidden(f"Only classroom {member.classroom_id}'s school may fetch its join token.")
    if live.status == "ended":
        raise Conflict(f"Session {live.id} has ended.")
    occurrence = current_occurrence(live, now)
    if occurrence is None:
        raise Conflict(f"Session {live.id}'s timetable is over.")
    ttl = values["ttl_seconds"]
    if ttl is None:
        ttl = int((occurrence[1] + TOKEN_SLACK - now).total_seconds())
    ttl = max(10, min(ttl, MAX_TOKEN_TTL_SECONDS))
    issued = now.timestamp()
    token = issue_token(
        settings.join_secrets[0].encode(), session_key(live.id), classroom_key(member.classroom_id), ttl, now=issued
    )
    # One sender per track (and simulcast layer slot): each encoder output sends its own hello from its own
    # RTP port; `camera:1` is the camera's second layer when the encoder sends each layer from its own port.
    hellos = {name: f"LXHELLO1 {token} {name}" for name in sender_names(member.tracks or [])}
    return {
        "token": token,
        "session": session_key(live.id),
        "classroom": classroom_key(member.classroom_id),
        "expires_at": iso(datetime.fromtimestamp(int(issued + ttl), UTC)),
        "hello": f"LXHELLO1 {token}",
        "hellos": hellos,
        "dataplane": live.dataplane,
        "media_address": (media_addresses or {}).get(live.dataplane) if live.dataplane else None,
    }


def check_join_token(
    settings: RelaySettings, token: str, session_id: int, classroom_id: int, now: float | None = None
) -> bool:
    """Whether `token` is valid now for exactly this session and classroom (the data plane's own rule)."""
    if not isinstance(token, str):
        return False
    _reason, claims = verify_token([secret.encode() for secret in settings.join_secrets], token, now)
    return claims is not None and (claims.session, claims.classroom) == (
        session_key(session_id), classroom_key(classroom_id)
    )


def register_sender(
    session: Session, scope: Scope, session_id: Any, classroom_id: Any, data: dict[str, Any],
    settings: RelaySettings, now: datetime | None = None,
) -> dict[str, Any]:
    """Pin an encoder's source address for one track of a classroom, for encoders that cannot send a hello
    first. It replaces the track's earlier sender: the explicit hand-over when an encoder restarts on
    another port (a second address with the same token is otherwise refused by the data plane)."""
    values = load(schemas.SenderIn(), data)
    issued = issue_join_token(session, scope, session_id, classroom_id, {}, settings, now)
    live = get_live_session(session, scope, session_id)
    member = find_member(live, classroom_id)
    assert member is not None  # issue_join_token checked it
    published = sender_names(member.tracks or [])
    if values["track"] not in published:
        raise NotFound(f"Classroom {member.classroom_id} publishes no track {values['track']!r} in session {live.id} "
                       f"(its senders: {', '.join(published) or 'none'}).", {"track": ["Not published."]})
    senders = [sender for sender in member.senders or [] if sender["track"] != values["track"]]
    senders.append({"track": values["track"], "host": values["host"], "port": values["port"], "token": issued["token"]})
    member.senders = senders  # a new list: the JSON column sees the change
    session.flush()
    return {"classroom_id": member.classroom_id, "track": values["track"], "address": [values["host"], values["port"]],
            "expires_at": issued["expires_at"]}


def classroom_sdp(
    session: Session, scope: Scope, session_id: Any, classroom_id: Any,
    outputs_by_dataplane: Mapping[str, Mapping[OutputKey, dict]],
) -> str:
    """The SDP any classroom of a live session (the master included) plays: one section per track it
    receives. `outputs_by_dataplane` is each data plane's confirmed outputs (dataplane_state.outputs_by_key);
    only the session's own data plane counts."""
    live = get_live_session(session, scope, session_id)
    member = find_member(live, require_id(classroom_id, "Classroom"))
    if member is None or member.state == "left":
        raise NotFound(f"Classroom {classroom_id} is not in session {live.id}.")
    if not covers(scope, member.classroom):
        raise Forbidden(f"Only classroom {member.classroom_id}'s school may fetch its SDP.")
    if live.status != "live" or member.state != "joined":
        raise Conflict(f"Classroom {member.classroom_id} is not live in session {live.id}; its SDP exists while it is.")
    if member.receive_port is None:
        raise Conflict(f"Classroom {member.classroom_id} has no receive address: it receives nothing.")
    routing = routing_members([m for m in live.members if m.state == "joined"], ("joined",))
    me = next(item for item in routing if item.classroom_id == member.classroom_id)
    wanted = tracks.outputs_for(live.kind, me, routing, member.receive_port)
    if not wanted:
        raise Conflict(f"Classroom {member.classroom_id} receives no track in session {live.id} now.")
    confirmed = outputs_by_dataplane.get(live.dataplane or "", {})
    sections = []
    for output in wanted:
        source_key = classroom_key(output.source_classroom_id)
        key = (session_key(live.id), classroom_key(member.classroom_id), source_key, output.track["track"])
        found = confirmed.get(key)
        if found is None or not found.get("relay_address"):
            raise DataPlaneUnavailable(
                f"The relay has not confirmed {source_key}/{output.track['track']} for classroom "
                f"{member.classroom_id} yet; try again in a moment."
            )
        relay_host, relay_port = found["relay_address"]
        sections.append(Section(port=output.port, track=output.track, label=label(source_key, output.track),
                                relay_rtcp=(relay_host, relay_port), ssrc=found.get("ssrc"),
                                cname=source_key))
    return build_receiver_sdp(relay_host=sections[0].relay_rtcp[0] if sections[0].relay_rtcp else "127.0.0.1",
                              sections=sections, session_name=f"{live.title} (session {live.id})")
