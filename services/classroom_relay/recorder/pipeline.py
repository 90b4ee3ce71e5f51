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
import ipaddress
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
    text = text.replace("\r\n", "\n")
    if "\r" in text:  # ffmpeg ends a line at a lone CR too: a line hidden behind one would go unchecked
        raise BadSdp("sdp lines end with CRLF or LF, not a lone CR")
    lines = [line for line in text.split("\n") if line]
    if not lines or lines[0] != "v=0":
        raise BadSdp("sdp must start with v=0")
    session: list[str] = []
    media: list[list[str]] = []
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise BadSdp(f"sdp line {line[:40]!r} is not <type>=<value>")
        _check_addresses(line)
        if line.startswith("m="):
            fields = line[2:].split()
            if len(fields) < 4 or fields[0] not in ("audio", "video") or not _port(fields[1]):
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


def _port(text: str) -> bool:
    # The length first: int() of thousands of digits is itself a ValueError.
    return text.isdigit() and len(text) <= 5 and 0 < int(text) < 65536


def _unicast(line: str, family: str, address: str) -> None:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise BadSdp(f"sdp line {line[:60]!r}: the address must be an IP address, not a host name") from None
    if family != f"IP{parsed.version}" or parsed.is_multicast:
        raise BadSdp(f"sdp line {line[:60]!r}: the address must be a unicast IPv4 or IPv6 address")


def _check_addresses(line: str) -> None:
    """ffmpeg sends RTCP to the `c=` (or `a=rtcp:`) address and joins it when it is multicast, and it would
    resolve a host name: only the relay's own unicast address, as an IP literal, is accepted (sdp.py writes
    nothing else)."""
    if line.startswith("c="):
        fields = line[2:].split()
        if len(fields) != 3 or fields[0] != "IN":
            raise BadSdp(f"sdp line {line[:60]!r} must be c=IN IP4|IP6 <address>")
        _unicast(line, fields[1], fields[2])
    elif line.startswith("a=rtcp:"):
        fields = line[7:].split()
        if not fields or not _port(fields[0]):
            raise BadSdp(f"sdp line {line[:60]!r}: the RTCP port must be 1-65535")
        if len(fields) > 1:
            if len(fields) != 4 or fields[1] != "IN":
                raise BadSdp(f"sdp line {line[:60]!r} must be a=rtcp:<port> [IN IP4|IP6 <address>]")
            _unicast(line, fields[2], fields[3])


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
