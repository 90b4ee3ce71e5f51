"""What one ffmpeg run records: the SDP it reads and its command line.

A recording has up to two streams, each its own ffmpeg so one's trouble never stops the other: `program`
(the camera and the audio, what a viewer watches) and `courseware` (the courseware video alone). Each reads
its own SDP — the session lines of the relay's SDP with only its tracks' `m=` sections — and writes HLS with
fMP4 segments (H.264 and Opus play in browsers through MSE only as fMP4) without re-encoding (`-c copy`).

`-listen_timeout` makes ffmpeg end its part by itself, cleanly (last segment, #EXT-X-ENDLIST), when media
stops for the stall time; a second SIGINT would interrupt its last playlist write (measured with ffmpeg 5.1:
an empty playlist), so a stop is one SIGINT and then SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
from dataclasses import dataclass
from pathlib import Path

PROGRAM, COURSEWARE = "program", "courseware"
PLAYLISTS = {PROGRAM: "index.m3u8", COURSEWARE: "courseware.m3u8"}
PART_FOLDERS = {PROGRAM: "part", COURSEWARE: "courseware-part"}  # part-000/, courseware-part-000/
PART_PLAYLIST = "stream.m3u8"
INIT_SEGMENT = "init.mp4"
ANALYZE_MICROSECONDS = 5_000_000  # long enough for a keyframe (SPS/PPS) of any classroom encoder's GOP


class BadSdp(ValueError):
    pass


@dataclass(frozen=True)
class SdpSection:
    kind: str
    port: int
    lines: tuple[str, ...]


def parse_sdp(text: str) -> tuple[tuple[str, ...], tuple[SdpSection, ...]]:
    """The session lines and the media sections of an SDP (RFC 8866), checked for what ffmpeg will read."""
    if not text.isascii() or "\x00" in text:
        raise BadSdp("sdp must be ASCII text")
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    if not lines or lines[0] != "v=0":
        raise BadSdp("sdp must start with v=0")
    session: list[str] = []
    media: list[list[str]] = []
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise BadSdp(f"sdp line {line[:40]!r} is not <type>=<value>")
        if line.startswith("m="):
            fields = line[2:].split()
            if len(fields) < 4 or fields[0] not in ("audio", "video") or not fields[1].isdigit():
                raise BadSdp(f"sdp media line {line[:60]!r} must be m=<audio|video> <port> RTP/AVP <pt>")
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    sections = [SdpSection(block[0].split()[0][2:], int(block[0].split()[1]), tuple(block)) for block in media]
    if not sections:
        raise BadSdp("sdp has no m= sections")
    return tuple(session), tuple(sections)


def stream_sdp(session: tuple[str, ...], sections: list[SdpSection]) -> str:
    return "\r\n".join([*session, *(line for section in sections for line in section.lines)]) + "\r\n"


def command(ffmpeg: str, sdp_path: Path, part_folder: Path, *, keep: bool, segment_seconds: int,
            stall_seconds: int, live_window: int) -> list[str]:
    flags = "independent_segments+temp_file" + ("" if keep else "+delete_segments")
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "warning",
        "-protocol_whitelist", "file,udp,rtp", "-listen_timeout", str(stall_seconds),
        "-analyzeduration", str(ANALYZE_MICROSECONDS), "-probesize", "10000000",
        "-i", str(sdp_path),
        "-map", "0", "-c", "copy",
        "-f", "hls", "-hls_time", str(segment_seconds), "-hls_segment_type", "fmp4",
        "-hls_fmp4_init_filename", INIT_SEGMENT, "-hls_flags", flags,
        "-hls_list_size", "0" if keep else str(live_window),
        "-hls_segment_filename", str(part_folder / "seg-%05d.m4s"),
        str(part_folder / PART_PLAYLIST),
    ]  # fmt: skip


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the kernel kills this child when the thread that started it ends (the recorder's main
    loop), so a recorder killed with SIGKILL leaves no ffmpeg holding its ports and writing its folders."""
    # Not Linux: no prctl; the recorder's own stop() still ends its children.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
