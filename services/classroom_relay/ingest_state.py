"""Classroom equipment in, the control plane's side: what the ingest process beside each data plane should do
(`set_state` of services/classroom_relay/ingest/control.py), and the RTMP publish point a school's recording
host is configured with.

Every broadcasting (master) classroom of a live session is ingested: by RTSP pull when the operators put its
camera's URL into the RTSP sources file (a mounted secret: credentials never enter the database or the API),
otherwise by RTMP push to the ingest's nginx-rtmp with a stream key derived from the classroom's join token.
The token's expiry is the end of the lesson's current occurrence plus `TOKEN_SLACK`, so the key stays the
same for the whole lesson and dies with it. The session's first audio track (AAC copied; Opus/G.711
transcoded from whatever the host sends) and first H.264 video track are what the ingest carries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.classroom_relay import lessons
from services.classroom_relay.dataplane.admission import issue_token
from services.classroom_relay.exceptions import Conflict
from services.classroom_relay.ingest.keys import stream_key
from services.classroom_relay.media_access import TOKEN_SLACK, issue_join_token
from services.classroom_relay.models import LiveSession
from services.classroom_relay.records import classroom_key, get_live_session, iso, master_member, session_key
from services.classroom_relay.relay_settings import RelaySettings
from services.common.scope import Scope
from services.common.timeutil import utcnow

log = logging.getLogger(__name__)
INGEST_AUDIO_CODECS = ("aac", "opus", "pcma", "pcmu")


def lesson_token(settings: RelaySettings, live: LiveSession, classroom_id: int, now: datetime) -> str | None:
    """The classroom's join token for the lesson's current occurrence, the same on every call (its expiry is
    the occurrence's end + TOKEN_SLACK); None when the timetable is over."""
    occurrence = lessons.current_occurrence(live, now)
    if occurrence is None:
        return None
    expires = int((occurrence[1] + TOKEN_SLACK).timestamp())
    return issue_token(settings.join_secrets[0].encode(), session_key(live.id), classroom_key(classroom_id), 0,
                       now=expires)


def ingest_tracks(published: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first audio track an ingest can feed and the first H.264 video track: what one RTMP/RTSP stream holds."""
    audio = next((t for t in published if t["kind"] == "audio" and t.get("codec") in INGEST_AUDIO_CODECS), None)
    video = next((t for t in published if t["kind"] == "video" and t.get("codec", "h264") == "h264"), None)
    return [{"track": t["track"], "kind": t["kind"], "codec": t.get("codec") or "h264",
             "payload_type": t["payload_type"], "clock_rate": t["clock_rate"]}
            for t in (audio, video) if t is not None]


def load_rtsp_sources(path: str | None) -> dict[str, str]:
    """Classroom id → RTSP URL from the secret file; a missing or broken file is logged (never its content)."""
    if not path:
        return {}
    try:
        loaded = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        log.warning("RTSP sources file %s unreadable: %s", path, type(error).__name__)
        return {}
    if not isinstance(loaded, dict):
        log.warning("RTSP sources file %s is not a JSON object", path)
        return {}
    return {str(key): value for key, value in loaded.items()
            if isinstance(value, str) and value.startswith(("rtsp://", "rtsps://"))}


def desired_ingests(db: Session, settings: RelaySettings, dataplane: str, media_address: list | None,
                    rtsp_sources: Mapping[str, str], now: datetime | None = None) -> dict[str, Any]:
    """The ingest process's whole desired state for the live sessions placed on `dataplane`."""
    now = now or utcnow()
    if not media_address:
        return {"ingests": []}
    query = (select(LiveSession).where(LiveSession.status == "live", LiveSession.dataplane == dataplane)
             .order_by(LiveSession.id))
    ingests = []
    for live in db.scalars(query):
        master = master_member(live)
        carried = ingest_tracks(master.tracks or [])
        token = lesson_token(settings, live, master.classroom_id, now)
        if master.state != "joined" or not carried or token is None:
            continue
        entry: dict[str, Any] = {"session": session_key(live.id), "classroom": classroom_key(master.classroom_id),
                                 "kind": "rtmp", "token": token, "media_address": list(media_address),
                                 "tracks": carried}
        url = rtsp_sources.get(str(master.classroom_id))
        if url:
            entry.update(kind="rtsp", rtsp_url=url)
        ingests.append(entry)
    return {"ingests": ingests}


def rtmp_publish_point(db: Session, scope: Scope, session_id: Any, classroom_id: Any, settings: RelaySettings,
                       rtmp_urls: Mapping[str, str], now: datetime | None = None) -> dict[str, Any]:
    """What the broadcasting classroom's recording host is configured with: server URL and stream key.
    Same checks as its join token (member, own school, write scope, lesson not over)."""
    now = now or utcnow()
    issue_join_token(db, scope, session_id, classroom_id, {}, settings, now)  # scope and membership checks
    live = get_live_session(db, scope, session_id)
    master = master_member(live)
    if master.classroom_id != int(classroom_id):
        raise Conflict(f"Classroom {classroom_id} does not broadcast in session {live.id}: only the master "
                       f"classroom ({master.classroom_id}) publishes by RTMP.")
    url = rtmp_urls.get(live.dataplane or "")
    if url is None:
        raise Conflict(f"Session {live.id} is not on a data plane with an RTMP ingest (RELAY_INGESTS); "
                       "start it first, or send RTP with the join token.")
    token = lesson_token(settings, live, master.classroom_id, now)
    assert token is not None  # issue_join_token refused a lesson whose timetable is over
    key = stream_key(token)
    return {"rtmp_url": url, "stream_key": key, "publish_url": f"{url}/{key}",
            "expires_at": iso(datetime.fromtimestamp(int(key.split(".")[2]), UTC))}
