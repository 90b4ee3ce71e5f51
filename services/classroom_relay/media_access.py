"""Media access: join tokens for classrooms, senders registered with the data plane, receivers' SDPs.

The token format is the data plane's (dataplane/admission.py verifies it on every hello).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from services.classroom_relay import schemas
from services.classroom_relay.dataplane.admission import issue_token, verify_token
from services.classroom_relay.exceptions import (
    Conflict,
    DataPlaneUnavailable,
    Forbidden,
    NotFound,
)
from services.classroom_relay.lessons import current_occurrence
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
from services.classroom_relay.sdp import build_receiver_sdp
from services.common.scope import Scope
from services.common.timeutil import utcnow
from services.common.validation import load

TOKEN_SLACK = timedelta(minutes=15)  # join tokens outlive the lesson's end by this much
MAX_TOKEN_TTL_SECONDS = 86_400



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
    return {
        "token": token,
        "session": session_key(live.id),
        "classroom": classroom_key(member.classroom_id),
        "expires_at": iso(datetime.fromtimestamp(int(issued + ttl), UTC)),
        "hello": f"LXHELLO1 {token}",
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
    """Pin an encoder's source address for a classroom, for encoders that cannot send a hello first."""
    values = load(schemas.SenderIn(), data)
    issued = issue_join_token(session, scope, session_id, classroom_id, {}, settings, now)
    live = get_live_session(session, scope, session_id)
    member = find_member(live, classroom_id)
    assert member is not None  # issue_join_token checked it
    member.sender_host, member.sender_port, member.sender_token = values["host"], values["port"], issued["token"]
    session.flush()
    return {"classroom_id": member.classroom_id, "address": [values["host"], values["port"]],
            "expires_at": issued["expires_at"]}


def branch_sdp(
    session: Session, scope: Scope, session_id: Any, classroom_id: Any,
    outputs_by_dataplane: Mapping[str, Mapping[tuple[str, str], dict]],
) -> str:
    """The SDP a receiving classroom plays; `outputs_by_dataplane` is each data plane's view of its outputs
    by (session, classroom) key (see `outputs_by_key`); only the session's own data plane counts."""
    live = get_live_session(session, scope, session_id)
    member = find_member(live, require_id(classroom_id, "Classroom"))
    if member is None or member.role != "branch" or member.state == "left":
        raise NotFound(f"Classroom {classroom_id} is not a branch of session {live.id}.")
    if not covers(scope, member.classroom):
        raise Forbidden(f"Only classroom {member.classroom_id}'s school may fetch its SDP.")
    if live.status != "live":
        raise Conflict(f"Session {live.id} is not live; its SDP exists while it is.")
    outputs = outputs_by_dataplane.get(live.dataplane or "", {})
    output = outputs.get((session_key(live.id), classroom_key(member.classroom_id)))
    if output is None or member.receive_port is None:  # a branch that has not joined has neither
        raise DataPlaneUnavailable(
            f"The relay has not confirmed classroom {member.classroom_id}'s stream yet; try again in a moment."
        )
    relay_host, relay_port = output["relay_address"]
    return build_receiver_sdp(
        relay_host=relay_host,
        receive_port=member.receive_port,
        relay_rtcp_port=relay_port,
        session_name=f"{live.title} (session {live.id})",
        ssrc=output.get("ssrc"),
    )
