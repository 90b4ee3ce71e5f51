"""One recording: its streams (program, courseware), each a run of parts — one part per ffmpeg run — and the
gaps between them, kept in manifest.json.

A part ends when its ffmpeg exits (media stopped for the stall time, a crash, a kill) or the recorder stops;
if the stream should still record, the next ffmpeg run starts the next part, and the time between the last
segment of one part and the first of the next is a gap: `start_seconds`/`end_seconds` from the recording's
start (wall clock), `playback_seconds` where it falls in the playlist and the MP4 (gaps take no playback
time). A part that wrote no segment is reused, so waiting for media never piles up empty parts.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from services.common.storage import remove_tree

from . import manifest as manifest_file
from .pipeline import PART_FOLDERS, PART_PLAYLIST, PLAYLISTS, PROGRAM
from .playlist import ComposedPart, PartPlaylist, compose, read_part, write_atomically


def utc_iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RecordingSpec:
    key: str
    session: str
    keep: bool
    sdp: str
    tracks: tuple[dict, ...]  # {track, kind, source, codec, port}
    streams: dict[str, str]  # stream → its SDP text (program: camera + audio; courseware)


@dataclass
class Part:
    index: int
    folder: str  # relative to the recording's folder: part-000, courseware-part-000
    started_at: float  # wall clock
    media_started_at: float | None = None  # wall clock: its first segment's file time less its duration
    ended_at: float | None = None  # wall clock: where its media ends (media start + the segments' durations)
    playlist: PartPlaylist = field(default_factory=PartPlaylist)
    playlist_mtime: float = 0.0

    def composed(self) -> ComposedPart:
        return ComposedPart(self.playlist.init or f"{self.folder}/init.mp4", tuple(self.playlist.segments))


@dataclass
class Stream:
    name: str
    sdp: str
    parts: list[Part] = field(default_factory=list)
    process: subprocess.Popen | None = None
    process_started: float = 0.0  # monotonic
    last_progress: float = 0.0  # monotonic: the last new segment (or the start)
    failures: int = 0
    next_start_at: float = 0.0
    restarts: int = 0
    killed_for_stall: bool = False
    counted: int = 0  # segments already in the supervisor's counters
    open_gap: dict | None = None
    last_error: str = ""
    error_file: IO[bytes] = field(default_factory=tempfile.TemporaryFile)

    def segments(self) -> int:
        return sum(len(part.playlist.segments) for part in self.parts)

    def playback_seconds(self) -> float:
        return sum(segment.duration for part in self.parts for segment in part.playlist.segments)


class Recording:
    def __init__(self, spec: RecordingSpec, folder: Path, segment_seconds: int) -> None:
        self.spec = spec
        self.folder = folder
        self.segment_seconds = segment_seconds
        self.state = "recording"
        self.final_state: str | None = None  # what finalizing ends in (the disk guard's stop is not "finished")
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.gaps: list[dict] = []
        self.files: dict[str, str | None] = {"hls": PLAYLISTS[PROGRAM], "courseware_hls": None,
                                             "program_mp4": None, "courseware_mp4": None}
        self.notes: list[str] = []
        self.bytes = 0
        self.forgotten = False
        self.streams = {name: Stream(name, sdp) for name, sdp in spec.streams.items()}
        self.new_latencies: list[float] = []  # segment complete → in the playlist, since last counted
        self.new_bytes = 0
        self.gaps_counted = 0
        self.last_segment_at: float | None = None

    # persistence ---------------------------------------------------------------------------------------------
    def resume(self, saved: dict[str, Any]) -> None:
        """Continue a recording a stopped recorder left in progress: its parts stay, the next part of each
        stream begins after a gap."""
        self.started_at = float(saved.get("started_at_unix") or self.started_at)
        self.gaps = [gap for gap in saved.get("gaps", []) if isinstance(gap, dict) and gap.get("end_seconds")]
        for entry in saved.get("parts", []):
            stream = self.streams.get(entry.get("stream", PROGRAM)) if isinstance(entry, dict) else None
            if stream is None or not isinstance(entry.get("index"), int):
                continue
            part = Part(entry["index"], f"{PART_FOLDERS[stream.name]}-{entry['index']:03d}",
                        float(entry.get("started_at_unix") or self.started_at))
            part.playlist = read_part(self.folder / part.folder / PART_PLAYLIST, part.folder)
            part.media_started_at = entry.get("media_started_at_unix")
            last = self._last_segment_time(part)
            if part.media_started_at is None and last is not None:
                part.media_started_at = last - sum(segment.duration for segment in part.playlist.segments)
            self._set_end(part)
            if part.playlist.segments:
                stream.parts.append(part)
        for stream in self.streams.values():
            if stream.parts:
                self.open_gap(stream, "recorder_restart")

    def manifest(self) -> dict[str, Any]:
        program = self.streams.get(PROGRAM)
        return {
            "key": self.spec.key, "session": self.spec.session, "keep": self.spec.keep, "state": self.state,
            "started_at": utc_iso(self.started_at), "started_at_unix": self.started_at,
            "ended_at": utc_iso(self.ended_at) if self.ended_at else None, "ended_at_unix": self.ended_at,
            "duration_seconds": round(program.playback_seconds(), 3) if program else 0.0,
            "parts": [{"stream": stream.name, "index": part.index, "folder": part.folder,
                       "started_at": utc_iso(part.started_at), "started_at_unix": part.started_at,
                       "ended_at": utc_iso(part.ended_at) if part.ended_at else None,
                       "ended_at_unix": part.ended_at, "media_started_at_unix": part.media_started_at,
                       "segments": len(part.playlist.segments)}
                      for stream in self.streams.values() for part in stream.parts],
            "gaps": [*self.gaps, *(stream.open_gap for stream in self.streams.values() if stream.open_gap)],
            "tracks": [{name: track.get(name) for name in ("track", "kind", "source", "codec")}
                       for track in self.spec.tracks],
            "files": dict(self.files), "bytes": self.bytes, "notes": list(self.notes),
            "forgotten": self.forgotten,
        }

    def save(self) -> None:
        if self.folder.is_dir():
            manifest_file.write(self.folder, self.manifest())

    # parts and gaps ------------------------------------------------------------------------------------------
    def new_part(self, stream: Stream, now: float) -> Part:
        """The folder the next ffmpeg run writes; an earlier part that wrote nothing is reused."""
        if stream.parts and not stream.parts[-1].playlist.segments:
            part = stream.parts.pop()
            remove_tree(self.folder / part.folder)
            index = part.index
        else:
            index = stream.parts[-1].index + 1 if stream.parts else 0
        part = Part(index, f"{PART_FOLDERS[stream.name]}-{index:03d}", time.time())
        # Whatever is there is stale (a run an earlier recorder began but that wrote no segment).
        remove_tree(self.folder / part.folder)
        (self.folder / part.folder).mkdir(parents=True)
        stream.parts.append(part)
        stream.process_started = stream.last_progress = now
        return part

    def open_gap(self, stream: Stream, reason: str) -> None:
        """The stream's last part has ended while it should record: a gap from its last segment on."""
        if stream.open_gap is not None or not stream.parts or not stream.parts[-1].playlist.segments:
            return
        last = stream.parts[-1]
        end_of_media = last.ended_at or self._last_segment_time(last) or time.time()
        stream.open_gap = {"stream": stream.name, "start_seconds": round(end_of_media - self.started_at, 3),
                           "end_seconds": None, "playback_seconds": round(stream.playback_seconds(), 3),
                           "reason": reason}

    def _close_gap(self, stream: Stream, media_started_at: float) -> None:
        if stream.open_gap is None:
            return
        resumed = max(media_started_at - self.started_at, stream.open_gap["start_seconds"])
        self.gaps.append({**stream.open_gap, "end_seconds": round(resumed, 3)})
        stream.open_gap = None

    @staticmethod
    def _set_end(part: Part) -> None:
        # From the media's own timeline, not file times: ffmpeg writes a part's last segment only when it ends,
        # which is the stall time after the media stopped.
        if part.media_started_at is not None:
            part.ended_at = part.media_started_at + sum(segment.duration for segment in part.playlist.segments)

    def _last_segment_time(self, part: Part) -> float | None:
        if not part.playlist.segments:
            return None
        try:
            return (self.folder / part.playlist.segments[-1].uri).stat().st_mtime
        except FileNotFoundError:
            return None

    # the live playlist ---------------------------------------------------------------------------------------
    def refresh(self, stream: Stream, now: float) -> bool:
        """Read the running part's playlist; on new segments, compose the stream's playlist. True if changed."""
        if not stream.parts:
            return False
        part = stream.parts[-1]
        path = self.folder / part.folder / PART_PLAYLIST
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return False
        if mtime == part.playlist_mtime:
            return False
        part.playlist_mtime = mtime
        before = len(part.playlist.segments)
        current = read_part(path, part.folder)
        known = {segment.uri for segment in part.playlist.segments}
        added = [segment for segment in current.segments if segment.uri not in known]
        if not added and current.ended == part.playlist.ended:
            return False
        # A live window (keep: false) drops old segments from ffmpeg's list; the recorder keeps counting them.
        part.playlist = PartPlaylist(current.init or part.playlist.init, [*part.playlist.segments, *added],
                                     current.ended)
        if not added:
            return True
        times = []
        for segment in added:
            try:
                times.append((self.folder / segment.uri).stat().st_mtime)
            except FileNotFoundError:
                times.append(time.time())
        if before == 0:
            part.media_started_at = times[0] - added[0].duration
            self._close_gap(stream, part.media_started_at)
        self._set_end(part)
        self.last_segment_at = time.time()
        stream.last_progress = now
        stream.failures = 0
        self.compose(stream)
        written = time.time()
        self.new_latencies.extend(written - at for at in times)
        for segment in added:
            try:
                self.new_bytes += (self.folder / segment.uri).stat().st_size
            except FileNotFoundError:
                continue
        if not self.spec.keep:
            self._drop_old_parts(stream)
        return True

    def compose(self, stream: Stream, ended: bool = False) -> None:
        parts = [part.composed() for part in stream.parts]
        text = compose(parts, ended=ended, keep=self.spec.keep, segment_seconds=self.segment_seconds)
        write_atomically(self.folder / PLAYLISTS[stream.name], text)
        if stream.name != PROGRAM:
            self.files["courseware_hls"] = PLAYLISTS[stream.name]

    def _drop_old_parts(self, stream: Stream) -> None:
        """keep: false: earlier parts' files go once the live window has moved past them."""
        while len(stream.parts) > 1 and stream.segments() - len(stream.parts[0].playlist.segments) >= 6:
            remove_tree(self.folder / stream.parts.pop(0).folder)

    def composed_parts(self, stream: str) -> list[ComposedPart]:
        return [part.composed() for part in self.streams[stream].parts] if stream in self.streams else []

    def stats(self) -> dict[str, Any]:
        return {**self.manifest(), "segments": sum(stream.segments() for stream in self.streams.values()),
                "last_segment_at": utc_iso(self.last_segment_at) if self.last_segment_at else None,
                "streams": {name: {"running": stream.process is not None and stream.process.poll() is None,
                                   "restarts": stream.restarts, "last_error": stream.last_error}
                            for name, stream in self.streams.items()}}
