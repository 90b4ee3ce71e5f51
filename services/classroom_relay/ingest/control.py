"""The ingest process's control channel: the data plane's wire format (dataplane/protocol.py: line-delimited
JSON, `hello` with the shared secret first, one reply per request), so the control plane's `ControlClient`
speaks to both. Operations:

- `hello` secret → instance, rtmp_url (what classrooms publish to)
- `set_state` ingests: [{session, classroom, kind: rtmp|rtsp, token, media_address: [h, p],
  tracks: [{track, kind, codec?, payload_type?, clock_rate?}], rtsp_url? (rtsp)}] — replaces everything →
  ingests: [{session, classroom, kind, senders, stream_key + rtmp_url + expires_at | rtsp_url (redacted)}]
- `get_stats` → stats: {ingests: [...], refused_publishes: {reason: n}}
"""

from __future__ import annotations

import re
import socket
import socketserver
import uuid
from typing import Any

from services.classroom_relay import sidecar
from services.classroom_relay.dataplane.admission import TRACK_NAME
from services.classroom_relay.sidecar import BadRequest

from .keys import token_binding
from .pipelines import AUDIO_ENCODERS
from .supervisor import IngestSpec, Supervisor

MAX_INGESTS = 256
MAX_TRACKS = 8
KEY_PART = re.compile(r"[A-Za-z0-9_-]{1,64}")
AUDIO_CODECS = ("aac", *AUDIO_ENCODERS)


def _track(value: Any) -> dict:
    name = value.get("track") if isinstance(value, dict) else None
    if not isinstance(value, dict) or not isinstance(name, str) or not TRACK_NAME.fullmatch(name):
        raise BadRequest("each track needs a name matching [a-z0-9_-]{1,32}")
    kind = value.get("kind")
    codec = value.get("codec") or ("aac" if kind == "audio" else "h264")
    if kind == "video" and codec != "h264":
        raise BadRequest(f"track {value['track']}: video is forwarded as it arrives and must be h264, not {codec}")
    if kind == "audio" and codec not in AUDIO_CODECS:
        raise BadRequest(f"track {value['track']}: audio codec must be one of {', '.join(AUDIO_CODECS)}")
    if kind not in ("audio", "video"):
        raise BadRequest(f"track {value['track']}: kind must be audio or video")
    payload_type = value.get("payload_type", 97 if kind == "audio" else 96)
    if not isinstance(payload_type, int) or isinstance(payload_type, bool) or not 0 <= payload_type <= 127:
        raise BadRequest(f"track {value['track']}: payload_type must be 0..127")
    clock_rate = value.get("clock_rate")
    if clock_rate is not None and (not isinstance(clock_rate, int) or not 1000 <= clock_rate <= 192_000):
        raise BadRequest(f"track {value['track']}: clock_rate must be 1000..192000")
    return {"track": value["track"], "kind": kind, "codec": codec, "payload_type": payload_type,
            "clock_rate": clock_rate}


def _spec(value: Any) -> IngestSpec:
    if not isinstance(value, dict):
        raise BadRequest("each ingest is an object")
    session, classroom, kind, token = (value.get(name) for name in ("session", "classroom", "kind", "token"))
    if not all(isinstance(part, str) and KEY_PART.fullmatch(part) for part in (session, classroom)):
        raise BadRequest("session and classroom must match [A-Za-z0-9_-]{1,64}")
    if kind not in ("rtmp", "rtsp"):
        raise BadRequest(f"{session}/{classroom}: kind must be rtmp or rtsp")
    try:
        binding = token_binding(token) if isinstance(token, str) else None
    except ValueError:
        binding = None
    if binding is None or (binding.session, binding.classroom) != (session, classroom):
        raise BadRequest(f"{session}/{classroom}: token must be this classroom's join token for this session")
    address = value.get("media_address")
    if (not isinstance(address, list) or len(address) != 2 or not isinstance(address[0], str)
            or not isinstance(address[1], int) or not 0 < address[1] < 65536):
        raise BadRequest(f"{session}/{classroom}: media_address must be [IPv4, port]")
    try:
        socket.inet_aton(address[0])
    except OSError as error:
        raise BadRequest(f"{session}/{classroom}: media_address host must be an IPv4 address") from error
    tracks = value.get("tracks")
    if not isinstance(tracks, list) or not 0 < len(tracks) <= MAX_TRACKS:
        raise BadRequest(f"{session}/{classroom}: tracks must list 1..{MAX_TRACKS} tracks")
    loaded = tuple(_track(track) for track in tracks)
    if len({track["track"] for track in loaded}) != len(loaded):
        raise BadRequest(f"{session}/{classroom}: track names repeat")
    url = value.get("rtsp_url")
    if kind == "rtsp" and not (isinstance(url, str) and url.startswith(("rtsp://", "rtsps://")) and len(url) < 2048):
        raise BadRequest(f"{session}/{classroom}: an rtsp ingest needs rtsp_url rtsp://[user:password@]host[:port]/path")
    return IngestSpec(str(session), str(classroom), kind, str(token), (address[0], address[1]), loaded,
                      url if kind == "rtsp" else None)


class IngestControl:
    def __init__(self, supervisor: Supervisor, rtmp_url: str | None) -> None:
        self.supervisor = supervisor
        self.rtmp_url = rtmp_url
        self.instance = uuid.uuid4().hex

    def handle(self, request: Any) -> dict:
        return sidecar.answer(request, {"hello": self._hello, "get_stats": self._get_stats,
                                        "set_state": self._set_state})

    def _hello(self, _request: dict) -> dict:
        return {"ok": True, "instance": self.instance, "rtmp_url": self.rtmp_url}

    def _get_stats(self, _request: dict) -> dict:
        return {"ok": True, "stats": self.supervisor.snapshot()}

    def _set_state(self, request: dict) -> dict:
        ingests = request.get("ingests")
        if not isinstance(ingests, list) or len(ingests) > MAX_INGESTS:
            raise BadRequest(f"ingests must be a list of at most {MAX_INGESTS}")
        specs = [_spec(entry) for entry in ingests]
        if len({(spec.session, spec.classroom) for spec in specs}) != len(specs):
            raise BadRequest("one ingest per (session, classroom)")
        if any(spec.kind == "rtmp" for spec in specs) and self.rtmp_url is None:
            raise BadRequest("this ingest process runs no RTMP server (--no-rtmp)")
        replies = self.supervisor.set_state(specs)
        for reply in replies:
            if reply["kind"] == "rtmp":
                reply["rtmp_url"] = self.rtmp_url
        return {"ok": True, "ingests": replies}


def serve_control(control: IngestControl, host: str, port: int, secret: str) -> socketserver.ThreadingTCPServer:
    return sidecar.serve_control(control.handle, host, port, secret, "ingest-control")
