"""The recorder's control channel (docs/recording.md): the data plane's wire format (sidecar.serve_control).

- `hello` secret → {instance, protocol, media_host, media_ports, storage, guard}
- `set_state` {recordings: [{key, session, keep, sdp, tracks: [{track, kind, source, codec, port}]}]} — the
  whole request is checked before anything changes; → {refused: [{key, error, message}]}
- `get_stats` → {instance, guard, storage, recordings: [manifest + segments, last_segment_at]}
- `forget` {keys} → {forgotten: [...]}
Malformed input is answered with `bad_request` and changes nothing.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from services.classroom_relay import sidecar
from services.classroom_relay.dataplane.admission import TRACK_NAME
from services.classroom_relay.sidecar import BadRequest
from services.common.playback_urls import KEY_PATTERN
from services.common.storage import BadKey

from .pipeline import COURSEWARE, PROGRAM, BadSdp, parse_sdp, stream_sdp
from .recording import RecordingSpec
from .supervisor import Supervisor

PROTOCOL = 1
MAX_RECORDINGS = 256
MAX_TRACKS = 8
MAX_SDP_BYTES = 16_384
SESSION = re.compile(r"[A-Za-z0-9_-]{1,64}")
CODECS = {"video": ("h264",), "audio": ("opus", "aac")}


def _track(value: Any, ports: tuple[int, int], key: str) -> dict:
    if not isinstance(value, dict) or not isinstance(value.get("track"), str) or not TRACK_NAME.fullmatch(
            value["track"]):
        raise BadRequest(f"{key}: each track needs a name matching [a-z0-9_-]{{1,32}}")
    name, kind, codec, port = value["track"], value.get("kind"), value.get("codec"), value.get("port")
    if kind not in CODECS:
        raise BadRequest(f"{key}/{name}: kind must be audio or video")
    if codec not in CODECS[kind]:
        raise BadRequest(f"{key}/{name}: {kind} is recorded as it arrives and must be {' or '.join(CODECS[kind])}")
    if not isinstance(port, int) or isinstance(port, bool) or port % 2 or not ports[0] <= port < ports[1]:
        raise BadRequest(f"{key}/{name}: port must be an even port in the recorder's media ports "
                         f"{ports[0]}-{ports[1]}")
    source = value.get("source")
    if source is not None and (not isinstance(source, str) or len(source) > 64):
        raise BadRequest(f"{key}/{name}: source must be a string of at most 64 characters")
    return {"track": name, "kind": kind, "codec": codec, "port": port, "source": source}


def parse_recording(value: Any, ports: tuple[int, int]) -> RecordingSpec:
    if not isinstance(value, dict):
        raise BadRequest("each recording is an object")
    key, session, keep, sdp = (value.get(name) for name in ("key", "session", "keep", "sdp"))
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise BadRequest(f"key must match {KEY_PATTERN.pattern}")
    if not isinstance(session, str) or not SESSION.fullmatch(session):
        raise BadRequest(f"{key}: session must match [A-Za-z0-9_-]{{1,64}}")
    if not isinstance(keep, bool):
        raise BadRequest(f"{key}: keep must be true or false")
    if not isinstance(sdp, str) or not 0 < len(sdp) <= MAX_SDP_BYTES:
        raise BadRequest(f"{key}: sdp must be the SDP text (at most {MAX_SDP_BYTES} bytes)")
    tracks = value.get("tracks")
    if not isinstance(tracks, list) or not 0 < len(tracks) <= MAX_TRACKS:
        raise BadRequest(f"{key}: tracks must list 1..{MAX_TRACKS} tracks")
    loaded = tuple(_track(track, ports, key) for track in tracks)
    if len({track["track"] for track in loaded}) != len(loaded) or len({t["port"] for t in loaded}) != len(loaded):
        raise BadRequest(f"{key}: track names and ports must not repeat")
    try:
        session_lines, sections = parse_sdp(sdp)
    except BadSdp as error:
        raise BadRequest(f"{key}: {error}") from error
    by_port = {section.port: section for section in sections}
    for track in loaded:
        section = by_port.get(track["port"])
        if section is None or section.kind != track["kind"]:
            raise BadRequest(f"{key}/{track['track']}: the sdp has no m={track['kind']} section on port "
                             f"{track['port']}")
    videos = [track for track in loaded if track["kind"] == "video"]
    camera = next((track for track in videos if track["track"] != COURSEWARE), None)
    courseware = next((track for track in videos if track["track"] == COURSEWARE), None)
    audio = next((track for track in loaded if track["kind"] == "audio"), None)
    streams = {}
    program = [by_port[track["port"]] for track in (camera, audio) if track is not None]
    if program:
        streams[PROGRAM] = stream_sdp(session_lines, program)
    if courseware is not None:
        streams[COURSEWARE] = stream_sdp(session_lines, [by_port[courseware["port"]]])
    if PROGRAM not in streams:
        raise BadRequest(f"{key}: nothing to record as the program: no camera video and no audio track")
    return RecordingSpec(key, session, keep, sdp, loaded, streams)


class RecorderControl:
    def __init__(self, supervisor: Supervisor, media_host: str, media_ports: tuple[int, int]) -> None:
        self.supervisor = supervisor
        self.media_host = media_host
        self.media_ports = media_ports
        self.instance = uuid.uuid4().hex

    def handle(self, request: Any) -> dict:
        # the storage failing under us (permissions, a mount, a planted link) is a storage_error reply
        return sidecar.answer(request, {"hello": self._hello, "get_stats": self._get_stats,
                                        "set_state": self._set_state, "forget": self._forget}, (OSError, BadKey))

    def _hello(self, _request: dict) -> dict:
        return {"ok": True, "instance": self.instance, "protocol": PROTOCOL, "media_host": self.media_host,
                "media_ports": list(self.media_ports), "storage": self.supervisor.storage_info(),
                "guard": self.supervisor.guard}

    def _get_stats(self, _request: dict) -> dict:
        snapshot = self.supervisor.snapshot()
        return {"ok": True, "instance": self.instance, "guard": snapshot["guard"],
                "storage": snapshot["storage"], "recordings": snapshot["recordings"]}

    def _set_state(self, request: dict) -> dict:
        recordings = request.get("recordings")
        if not isinstance(recordings, list) or len(recordings) > MAX_RECORDINGS:
            raise BadRequest(f"recordings must be a list of at most {MAX_RECORDINGS}")
        specs = [parse_recording(entry, self.media_ports) for entry in recordings]
        if len({spec.key for spec in specs}) != len(specs):
            raise BadRequest("one entry per recording key")
        ports = [track["port"] for spec in specs for track in spec.tracks]
        if len(set(ports)) != len(ports):
            raise BadRequest("two recordings cannot receive on the same port")
        return {"ok": True, "refused": self.supervisor.set_state(specs)}

    def _forget(self, request: dict) -> dict:
        keys = request.get("keys")
        if not isinstance(keys, list) or len(keys) > 4096 or not all(
                isinstance(key, str) and KEY_PATTERN.fullmatch(key) for key in keys):
            raise BadRequest(f"keys must be a list of recording keys ({KEY_PATTERN.pattern})")
        return {"ok": True, "forgotten": self.supervisor.forget(keys)}
