"""HLS playlists: read what one ffmpeg run (a part) wrote, and compose the recording's own playlist from all
its parts — `#EXT-X-DISCONTINUITY` and `#EXT-X-MAP` (the part's fMP4 init segment) where a part begins,
`EVENT` while live, `#EXT-X-ENDLIST` at the end (RFC 8216). A kept recording lists every segment; a
patrol-only one (keep: false) a rolling window, its media and discontinuity sequences counting what left it.

ffmpeg lists a segment only once it is complete (with `temp_file`, the file is renamed into place first),
so everything composed here is playable as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from services.common.storage import write_file

LIVE_WINDOW_SEGMENTS = 6


@dataclass(frozen=True)
class Segment:
    uri: str  # relative to the recording's folder, e.g. part-000/seg-00003.m4s
    duration: float


@dataclass
class PartPlaylist:
    init: str | None = None  # relative to the recording's folder
    segments: list[Segment] = field(default_factory=list)
    ended: bool = False


def read_part(path: Path, folder: str) -> PartPlaylist:
    """A part's playlist as ffmpeg wrote it (`folder` is the part's folder name, prefixed to every URI). A
    missing or half-written file reads as what it lists so far."""
    result = PartPlaylist()
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return result
    duration: float | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#EXT-X-MAP:"):
            uri = line.partition('URI="')[2].partition('"')[0]
            if uri:
                result.init = f"{folder}/{uri}"
        elif line.startswith("#EXTINF:"):
            try:
                duration = float(line[len("#EXTINF:"):].partition(",")[0])
            except ValueError:
                duration = None
        elif line == "#EXT-X-ENDLIST":
            result.ended = True
        elif line and not line.startswith("#") and duration is not None:
            result.segments.append(Segment(f"{folder}/{line}", duration))
            duration = None
    return result


@dataclass(frozen=True)
class ComposedPart:
    init: str
    segments: tuple[Segment, ...]


def compose(parts: list[ComposedPart], *, ended: bool, keep: bool, segment_seconds: int) -> str:
    """The recording's playlist text from its parts (in order; parts without segments are left out)."""
    listed = [part for part in parts if part.segments]
    entries: list[tuple[int, ComposedPart, Segment]] = [
        (number, part, segment) for number, part in enumerate(listed) for segment in part.segments]
    media_sequence = discontinuity_sequence = 0
    if not keep and len(entries) > LIVE_WINDOW_SEGMENTS:
        media_sequence = len(entries) - LIVE_WINDOW_SEGMENTS
        entries = entries[media_sequence:]
        discontinuity_sequence = entries[0][0]  # part boundaries that left the window
    longest = max((segment.duration for _, _, segment in entries), default=float(segment_seconds))
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", f"#EXT-X-TARGETDURATION:{max(1, math.ceil(longest))}"]
    if keep:
        # EVENT for good: RFC 8216 §6.2.1 lets a live playlist only grow and end, so it never turns VOD; an
        # EVENT playlist with #EXT-X-ENDLIST is a complete one.
        lines.append("#EXT-X-PLAYLIST-TYPE:EVENT")
    lines.append(f"#EXT-X-MEDIA-SEQUENCE:{media_sequence}")
    if discontinuity_sequence:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}")
    lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    current = -1
    for number, part, segment in entries:
        if number != current:
            if current != -1:
                lines.append("#EXT-X-DISCONTINUITY")
            lines.append(f'#EXT-X-MAP:URI="{part.init}"')
            current = number
        lines += [f"#EXTINF:{segment.duration:.6f},", segment.uri]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Readers (nginx, a player polling the live playlist) see the old file or the new one, never half."""
    write_file(path, text)
