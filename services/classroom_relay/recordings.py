"""Recordings (录播) of live sessions, the control plane's side (docs/recording.md).

A recorder beside a data plane (RELAY_RECORDERS) is attached to every live session placed there, so
inspectors can patrol it; `keep` is the session's `record` flag (on by default for 专递课堂 and 名师课堂).
Each running recording is a row in `relay_recordings`, key `rec-<id>`, and holds an even block of
`PORT_BLOCK` ports from the recorder's media range: the master's i-th track arrives at `base + 2*i`. The
data plane sends them to a receive-only member `recorder-<session>` (dataplane_state.py) whose budget is
the relay's own, never a school's link.

Lifecycle of a row: `recording` → `ending` (the session ended or its `record` flag was switched: the key
leaves the recorder's desired state, the recorder finalizes) → `available` (the recorder reported it
`finished`: `recording.available`), `discarded` (patrol only) or `failed`. Switching `record` while live
ends the running recording and starts a new one with the other `keep`, so one key never changes what it
keeps. Every event is added to the outbox in the same transaction as the change it reports.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.classroom_relay import schemas, tracks
from services.classroom_relay.models import LiveSession, Recording, outbox
from services.classroom_relay.records import (
    classroom_key,
    dump_session,
    get_live_session,
    iso,
    master_member,
    recorder_member_key,
    recording_key,
    require_write_on,
    session_key,
)
from services.classroom_relay.sdp import Section, build_receiver_sdp
from services.common.scope import Scope
from services.common.timeutil import as_utc, utcnow
from services.common.validation import load

log = logging.getLogger(__name__)

PORT_BLOCK = 2 * schemas.MAX_TRACKS_PER_CLASSROOM  # an RTP/RTCP pair per track the master may publish
# The recorder's budget against the master's full rate (all simulcast layers): the allocator then always
# picks each track's best layer, with room for a keyframe burst.
RECORDER_BUDGET_FACTOR = 2
HOLDING_PORTS = ("recording", "ending")  # an ending recording's ffmpeg may still hold its ports a moment
ENDING_GRACE = timedelta(minutes=5)  # an ending recording the recorder does not list is failed after this
FINAL_STATES = ("available", "discarded", "failed")
# What the recorder reports of a recording whose files are complete and playable: finished, or finalized early
# because its disk filled up (services/classroom_relay/recorder: the disk guard).
FINISHED = ("finished", "stopped_disk_full")
KEY = re.compile(r"rec-([1-9][0-9]{0,17})")
# What the recorder copies into HLS/MP4 as it arrives (services/classroom_relay/recorder/control.py), and the
# track name it keeps apart as the courseware.
RECORDABLE = {"audio": ("opus", "aac"), "video": ("h264",)}
COURSEWARE = "courseware"


@dataclass(frozen=True)
class Recorder:
    """The recorder beside one data plane, as its `hello` advertised it."""

    dataplane: str
    media_host: str  # IPv4 address the data plane sends to
    media_ports: tuple[int, int]  # inclusive


# --- ports and tracks --------------------------------------------------------------------------------------


def port_blocks(low: int, high: int) -> list[int]:
    """Every even base port whose block of PORT_BLOCK ports lies within [low, high]."""
    first = low + (low % 2)
    return list(range(first, high - PORT_BLOCK + 2, PORT_BLOCK))


def free_base(used: set[int], low: int, high: int) -> int | None:
    """The lowest block not used by a running recording on the same recorder; None when all are."""
    return next((base for base in port_blocks(low, high) if base not in used), None)


def recorded_tracks(published: list[dict[str, Any]], base: int) -> list[dict[str, Any]]:
    """The master's tracks as the recorder receives them, the i-th at `base + 2*i`; only what it writes without
    re-encoding (RECORDABLE: G.711 audio is left out, its port stays unused)."""
    found = []
    for index, track in enumerate(published[: schemas.MAX_TRACKS_PER_CLASSROOM]):
        codec = track.get("codec") or ("opus" if track["kind"] == "audio" else "h264")
        if codec in RECORDABLE.get(track["kind"], ()):
            found.append({"track": track["track"], "kind": track["kind"], "codec": codec,
                          "source": track.get("source") or track["track"], "port": base + 2 * index})
    return found


def has_program(recorded: list[dict[str, Any]]) -> bool:
    """The recorder's program is the camera (any video but the courseware) and the audio: one of them is needed."""
    return any(track["kind"] == "audio" or track["track"] != COURSEWARE for track in recorded)


def recorder_budget_bps(published: list[dict[str, Any]]) -> int:
    return RECORDER_BUDGET_FACTOR * max(tracks.total_bps(published), schemas.DEFAULT_SOURCE_BPS)


# --- event bodies --------------------------------------------------------------------------------------------


def facts_of(live: LiveSession) -> dict[str, Any]:
    """Who and what a recording is of, as when it starts: the common part of its events."""
    master = master_member(live)
    school = master.classroom.school
    return {"session_id": live.id, "session_kind": live.kind, "title": live.title, "school_id": school.id,
            "classroom_id": master.classroom_id, "teacher_id": live.teacher_id, "subject": live.subject,
            "grade": live.grade, "district_id": school.district_id}


def started_body(recording: Recording) -> dict[str, Any]:
    return {"recording_id": recording.id, "key": recording_key(recording.id), **recording.facts,
            "keep": recording.keep, "started_at": iso(recording.started_at)}


def ended_body(recording: Recording, state: str) -> dict[str, Any]:
    return {**started_body(recording), "ended_at": iso(recording.ended_at), "state": state}


def public_tracks(recording: Recording) -> list[dict[str, Any]]:
    return [{key: track[key] for key in ("track", "kind", "source", "codec")} for track in recording.tracks]


def available_body(recording: Recording) -> dict[str, Any]:
    return {"recording_id": recording.id, "key": recording_key(recording.id), **recording.facts,
            "started_at": iso(recording.started_at), "ended_at": iso(recording.ended_at),
            "duration_seconds": round(recording.duration_seconds or 0.0, 3), "tracks": public_tracks(recording),
            "files": recording.files or {}, "gaps": recording.gaps or [], "bytes": recording.bytes or 0}


def _emit(db: Session, event: str, recording: Recording, body: dict[str, Any]) -> None:
    outbox.add(db, event, body, bureau_id=recording.bureau_id,
               subject=f"session/{recording.session_id}/recording/{recording.id}")


# --- lifecycle ------------------------------------------------------------------------------------------------


def running_of(db: Session, session_id: int) -> Recording | None:
    # Locked: two control-plane replicas must not both end it (one recording.ended).
    return db.scalar(select(Recording).where(Recording.session_id == session_id, Recording.state == "recording")
                     .with_for_update())


def start(db: Session, live: LiveSession, recorder: Recorder, now: datetime) -> Recording | None:
    """A new running recording of `live` on `recorder` and its `recording.started`; None when no port block
    is free (logged: the session runs unrecorded until one is) or the master publishes nothing recordable."""
    used = set(db.scalars(select(Recording.base_port).where(
        Recording.recorder == recorder.dataplane, Recording.state.in_(HOLDING_PORTS))))
    base = free_base(used, *recorder.media_ports)
    if base is None:
        log.warning("recorder beside %s has no free port block for session %s", recorder.dataplane, live.id)
        return None
    master = master_member(live)
    recorded = recorded_tracks(master.tracks or [], base)
    if not has_program(recorded):
        return None  # e.g. only courseware, or only G.711 audio: nothing the recorder can make a program of
    recording = Recording(
        session_id=live.id, recorder=recorder.dataplane, media_host=recorder.media_host, base_port=base,
        keep=live.record, state="recording", bureau_id=master.classroom.school.bureau_id, facts=facts_of(live),
        tracks=recorded, started_at=now, duration_seconds=0.0, bytes=0,
        segments=0, gaps=[], files={},
    )
    db.add(recording)
    db.flush()
    _emit(db, "recording.started", recording, started_body(recording))
    return recording


def end(db: Session, recording: Recording, now: datetime, state: str = "finalizing") -> None:
    """Take a running recording off the recorder (it finalizes) and say so: `recording.ended`."""
    if recording.state != "recording":
        return
    recording.state, recording.ended_at = "ending", now
    db.flush()
    _emit(db, "recording.ended", recording, ended_body(recording, state))


def end_running(db: Session, live: LiveSession, now: datetime) -> None:
    """The session's live occurrence ended (lessons.end_session): so does its recording."""
    running = running_of(db, live.id)
    if running is not None:
        end(db, running, now)


def set_recording(db: Session, scope: Scope, session_id: Any, data: Any, now: datetime | None = None) -> dict[str, Any]:
    """Switch keeping the session's lessons on or off. While it is live the running recording with the other
    `keep` ends at once; the next push starts one with the new `keep` (reconcile)."""
    values = load(schemas.RecordingIn(), data)
    now = now or utcnow()
    live = get_live_session(db, scope, session_id, lock=True)
    require_write_on(scope, master_member(live).classroom, "switch this session's recording")
    live.record = values["record"]
    running = running_of(db, live.id) if live.status == "live" else None
    if running is not None and running.keep != live.record:
        end(db, running, now)
    db.flush()
    db.expire(live, ["running_recording"])
    return dump_session(live)


def reconcile(db: Session, recorder: Recorder, now: datetime | None = None) -> list[Recording]:
    """Make the recordings on `recorder` match the live sessions of its data plane: start one for each live
    session whose master has joined, end those of sessions no longer live there or whose `record` changed.
    Returns the running recordings."""
    now = now or utcnow()
    lives = {live.id: live for live in db.scalars(select(LiveSession).where(
        LiveSession.status == "live", LiveSession.dataplane == recorder.dataplane).order_by(LiveSession.id))}
    running = {recording.session_id: recording for recording in db.scalars(select(Recording).where(
        Recording.recorder == recorder.dataplane, Recording.state == "recording").with_for_update())}
    for session_id, recording in list(running.items()):
        live = lives.get(session_id)
        if live is None or recording.keep != live.record:
            end(db, recording, now)
            del running[session_id]
        elif recording.media_host != recorder.media_host:
            recording.media_host = recorder.media_host  # the recorder came back at another address
    for live in lives.values():
        master = master_member(live)
        if live.id not in running and master.state == "joined" and master.tracks:
            started = start(db, live, recorder, now)
            if started is not None:
                running[live.id] = started
    db.flush()
    return sorted(running.values(), key=lambda recording: recording.id)


# --- what the data plane and the recorder are told ---------------------------------------------------------------


def running_by_session(db: Session, dataplane: str | None = None) -> dict[int, Recording]:
    query = select(Recording).where(Recording.state == "recording")
    if dataplane is not None:
        query = query.where(Recording.recorder == dataplane)
    return {recording.session_id: recording for recording in db.scalars(query)}


def recorder_member(live: LiveSession, recording: Recording) -> dict[str, Any] | None:
    """The recorder as a receive-only member of the session in the data plane's `set_state`: every recorded
    track of the master at the recorder's ports, with the relay's own budget. None until the master joined."""
    master = master_member(live)
    published = {track["track"] for track in master.tracks or []}
    outputs = [{"source_classroom": classroom_key(master.classroom_id), "track": track["track"], "port": track["port"]}
               for track in recording.tracks if track["track"] in published]
    if master.state != "joined" or not outputs:
        return None
    return {"classroom": recorder_member_key(live.id), "tracks": [], "senders": [],
            "receive": {"host": recording.media_host,
                        "budget_bytes_per_second": recorder_budget_bps(master.tracks or []) / 8,
                        "outputs": outputs}}


def _present(live: LiveSession, recording: Recording) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(recorded track, the master's full track) for each recorded track the master still publishes."""
    by_name = {track["track"]: track for track in master_member(live).tracks or []}
    return [(wanted, by_name[wanted["track"]]) for wanted in recording.tracks if wanted["track"] in by_name]


def recorder_sdp(live: LiveSession, recording: Recording, relay_host: str,
                 confirmed: dict[tuple[str, str, str, str], dict] | None = None) -> str:
    """What the recorder's ffmpeg reads: one m= per recorded track at its port; `a=rtcp` names the data
    plane's socket for that output once it confirmed it (receiver reports and keyframe requests go there)."""
    source = classroom_key(master_member(live).classroom_id)
    sections = []
    for wanted, track in _present(live, recording):
        found = (confirmed or {}).get((session_key(live.id), recorder_member_key(live.id), source, track["track"]))
        relay_rtcp = None
        if found and found.get("relay_address") and found["relay_address"][0] not in ("0.0.0.0", ""):
            relay_rtcp = (str(found["relay_address"][0]), int(found["relay_address"][1]))
        sections.append(Section(port=wanted["port"], track=track, label=tracks.label(source, track),
                                relay_rtcp=relay_rtcp, ssrc=(found or {}).get("ssrc")))
    return build_receiver_sdp(relay_host=relay_host, sections=sections, session_version=recording.id,
                              session_name=recording_key(recording.id))


def recorder_state(db: Session, dataplane: str, relay_host: str,
                   confirmed: dict[tuple[str, str, str, str], dict] | None = None) -> dict[str, Any]:
    """The recorder's whole desired state (`set_state` of docs/recording.md): the running recordings of the
    live sessions on `dataplane`. Its `tracks` and the SDP's sections are the same list (the recorder checks)."""
    entries = []
    for session_id, recording in sorted(running_by_session(db, dataplane).items()):
        live = recording.session
        if live.status != "live" or recorder_member(live, recording) is None:
            continue
        entries.append({"key": recording_key(recording.id), "session": session_key(session_id),
                        "keep": recording.keep, "sdp": recorder_sdp(live, recording, relay_host, confirmed),
                        "tracks": [dict(wanted) for wanted, _track in _present(live, recording)]})
    return {"recordings": entries}


def unfinished_counts(db: Session) -> dict[tuple[str, str], int]:
    """(data plane, state) → how many recordings are running or ending there (the control plane's gauge)."""
    query = (select(Recording.recorder, Recording.state, func.count()).where(Recording.state.in_(HOLDING_PORTS))
             .group_by(Recording.recorder, Recording.state))
    return {(dataplane, state): count for dataplane, state, count in db.execute(query)}


# --- what the recorder reports ----------------------------------------------------------------------------------


def _number(value: Any, default: float = 0.0) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else default


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


def _update(recording: Recording, entry: dict[str, Any]) -> None:
    state = entry.get("state")
    recording.recorder_state = state[:32] if isinstance(state, str) else recording.recorder_state
    recording.duration_seconds = _number(entry.get("duration_seconds"), recording.duration_seconds or 0.0)
    recording.bytes = int(_number(entry.get("bytes"), recording.bytes or 0))
    recording.segments = int(_number(entry.get("segments"), recording.segments or 0))
    recording.last_segment_at = _moment(entry.get("last_segment_at")) or recording.last_segment_at
    gaps = entry.get("gaps")
    if isinstance(gaps, list):
        recording.gaps = [{"start_seconds": _number(gap.get("start_seconds")),
                           "end_seconds": _number(gap.get("end_seconds")),
                           "reason": str(gap.get("reason") or "")[:64]} for gap in gaps if isinstance(gap, dict)]
    files = entry.get("files")
    if isinstance(files, dict):
        recording.files = {str(name): value for name, value in files.items()
                           if value is None or isinstance(value, str)}


def _finish(db: Session, recording: Recording, now: datetime) -> None:
    if not recording.keep:
        recording.state = "discarded"  # patrol only: the recorder removed its folder
    elif not recording.duration_seconds:
        recording.state = "discarded"  # the master never sent anything: no lesson to publish
    elif (recording.files or {}).get("hls"):
        recording.state, recording.available_at = "available", now
        db.flush()
        _emit(db, "recording.available", recording, available_body(recording))
    else:
        recording.state = "failed"  # finished without a playlist: nothing to publish


def _fail_unknown(db: Session, dataplane: str, listed: list[Any], now: datetime) -> None:
    """An ending recording the recorder no longer lists (it refused it, or lost it with its disk) will never
    finish: failed, once it had ENDING_GRACE to show up (a restarting recorder lists its recordings again)."""
    keys = {entry.get("key") for entry in listed if isinstance(entry, dict)}
    stale = db.scalars(select(Recording).where(
        Recording.recorder == dataplane, Recording.state == "ending", Recording.ended_at < now - ENDING_GRACE)
        .with_for_update())
    for recording in stale:
        if recording_key(recording.id) not in keys:
            recording.state, recording.recorder_state = "failed", "unknown to the recorder"
            log.warning("recording %s never finished on the recorder beside %s", recording_key(recording.id),
                        dataplane)


def mark_refused(db: Session, dataplane: str, refused: Any) -> None:
    """What the recorder refused in `set_state` (e.g. `disk_full`), kept on the recording for operators."""
    for entry in refused if isinstance(refused, list) else []:
        match = KEY.fullmatch(entry.get("key", "")) if isinstance(entry, dict) and isinstance(entry.get("key"), str) \
            else None
        recording = db.get(Recording, int(match.group(1))) if match else None
        if recording is not None and recording.recorder == dataplane and recording.state == "recording":
            recording.recorder_state = f"refused: {str(entry.get('error'))[:22]}"


def apply_stats(db: Session, dataplane: str, stats: Any, now: datetime | None = None) -> list[str]:
    """Fold the recorder's `get_stats` into the rows of its recordings; a `finished` one becomes available
    (with its event) or discarded, a `failed` one failed. Returns the keys the recorder may forget (the
    caller commits first). Anything malformed is skipped, never raised."""
    now = now or utcnow()
    reported: dict[int, dict[str, Any]] = {}
    listed = stats.get("recordings") if isinstance(stats, dict) else None
    if isinstance(listed, list):
        _fail_unknown(db, dataplane, listed, now)
    for entry in listed or []:
        match = KEY.fullmatch(entry.get("key", "")) if isinstance(entry, dict) and isinstance(entry.get("key"), str) \
            else None
        if match:
            reported[int(match.group(1))] = entry
    forget: list[str] = []
    if not reported:
        return forget
    # Locked: of two control-plane replicas reading the same stats, the second sees the first's outcome.
    rows = db.scalars(select(Recording).where(Recording.id.in_(reported), Recording.recorder == dataplane)
                      .with_for_update())
    for recording in rows:
        entry = reported[recording.id]
        if recording.state in FINAL_STATES:
            forget.append(recording_key(recording.id))  # an earlier `forget` did not arrive
            continue
        _update(recording, entry)
        state = entry.get("state")
        if state in FINISHED:
            end(db, recording, now)  # finished on its own (e.g. its disk filled up): ended first
            _finish(db, recording, now)
            forget.append(recording_key(recording.id))
        elif state == "failed":
            end(db, recording, now, state="failed")
            recording.state = "failed"
            forget.append(recording_key(recording.id))
    db.flush()
    return forget
