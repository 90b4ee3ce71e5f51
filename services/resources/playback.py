"""Signed playback URLs (services/common/playback_urls.py) for a resource, its clips and live lessons.

nginx serves the bytes under `/media/`; this module only signs. A URL names one recording key (a clip's
also its start and end) and expires after PLAYBACK_URL_LIFETIME seconds; with MEDIA_PUBLIC_URL empty
the URLs are paths on the API's own host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common import playback_urls
from services.common.config import MEDIA_PUBLIC_URL, PLAYBACK_SECRET, PLAYBACK_URL_LIFETIME
from services.common.scope import Scope
from services.resources import access, library
from services.resources.exceptions import PlaybackNotConfigured
from services.resources.models import LiveRecording


@dataclass(frozen=True)
class Signer:
    secret: str
    lifetime: int
    base_url: str = ""

    @classmethod
    def from_config(cls, config: dict[str, Any] | None = None) -> Signer | None:
        """The configured signer; None without a PLAYBACK_SECRET (nothing nginx would accept can be signed)."""
        secret = PLAYBACK_SECRET.get(config)
        if not secret:
            return None
        return cls(secret, PLAYBACK_URL_LIFETIME.get(config), (MEDIA_PUBLIC_URL.get(config) or "").rstrip("/"))

    def expires(self, now: float | None = None) -> int:
        return int(now if now is not None else time.time()) + self.lifetime

    def url(self, key: str, file: str, expires: int, start: float | None = None, end: float | None = None) -> str:
        return self.base_url + playback_urls.signed_path(key, file, expires, self.secret, start, end)


def require(signer: Signer | None) -> Signer:
    if signer is None:
        raise PlaybackNotConfigured("Playback is not configured: set PLAYBACK_SECRET (nginx checks the same secret).")
    return signer


def expires_at(expires: int) -> str:
    return datetime.fromtimestamp(expires, UTC).isoformat()


def resource_playback(session: Session, scope: Scope, resource_id: int, signer: Signer | None,
                      now: float | None = None) -> dict[str, Any]:
    signer = require(signer)
    resource = access.visible_resource(session, scope, resource_id)
    files, key = resource.files or {}, resource.recording_key
    expires = signer.expires(now)
    program = files.get("program_mp4")
    courseware = files.get("courseware_mp4") or files.get("courseware_hls")
    clips = []
    for clip in library.live_clips(session, resource.id):
        # A clip is cut from the MP4 by nginx's mp4 module; without the MP4 it has no URL of its own.
        url = signer.url(key, program, expires, clip.start_seconds, clip.end_seconds) if program else None
        clips.append({"id": clip.id, "title": clip.title, "start_seconds": clip.start_seconds,
                      "end_seconds": clip.end_seconds, "url": url})
    return {
        "hls_url": signer.url(key, files.get("hls") or "index.m3u8", expires),
        "mp4_url": signer.url(key, program, expires) if program else None,
        "courseware_url": signer.url(key, courseware, expires) if courseware else None,
        "expires_at": expires_at(expires),
        "clips": clips,
    }


def patrol_sessions(session: Session, scope: Scope, signer: Signer | None, now: float | None = None) -> dict[str, Any]:
    """Live recordings in the token's own scope, each with a signed live playlist."""
    signer = require(signer)
    expires = signer.expires(now)
    rows = session.scalars(select(LiveRecording).where(access.live_condition(scope))
                           .order_by(LiveRecording.started_at, LiveRecording.recording_id)).all()
    return {"items": [{
        "session_id": row.session_id, "title": row.title, "session_kind": row.session_kind,
        "school_id": row.school_id, "classroom_id": row.classroom_id, "teacher_id": row.teacher_id,
        "started_at": library.iso(row.started_at), "recording_key": row.recording_key,
        "live_url": signer.url(row.recording_key, "index.m3u8", expires), "expires_at": expires_at(expires),
    } for row in rows]}
