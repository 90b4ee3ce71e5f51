"""The ffmpeg command lines that repackage a classroom's RTMP or RTSP stream to RTP, one output per track.

Video is never re-encoded (`-c:v copy`): the H.264 the classroom's encoder made goes to the receiving
classrooms as it is. `h264_mp4toannexb` + `dump_extra` put SPS/PPS in front of every keyframe (RTMP carries
them once, out of band; an RTSP camera in its SDP), so a receiving classroom that joins late, or the relay
switching to this stream, can start decoding at any keyframe. Audio follows the classroom's declared audio
track: `aac` is copied (RTP `mpeg4-generic`, which the relay carries and describes in its SDP), `opus`
(or anything else a receiver plays better) is the one thing transcoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.classroom_relay.sidecar import stop_child

__all__ = ["stop_child"]  # ingest modules stop their children through pipelines (shared with the recorder)

AUDIO_ENCODERS = {"opus": ["-c:a", "libopus", "-ar", "48000", "-b:a", "96k"],
                  "pcma": ["-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1"],
                  "pcmu": ["-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1"]}
# Probe little and buffer nothing: what ffmpeg reads while probing leaves in one burst afterwards, and a
# burst is what the relay's pacer must drop for a 10 Mbit/s receiving classroom. RTMP and RTSP both describe
# their streams up front (FLV sequence headers, the SDP), so a small probe is enough.
LOW_DELAY_INPUT = ["-fflags", "+nobuffer+genpts", "-analyzeduration", "500000", "-probesize", "262144"]
RTP_PACKET_BYTES = 1200  # below any path MTU between a data plane and a classroom


@dataclass(frozen=True)
class TrackOut:
    """Where one track of the source goes: its kind, codec and payload type, and the local hop port."""

    track: str
    kind: str  # audio | video
    codec: str
    payload_type: int
    port: int


def _track_args(index: int, out: TrackOut, ssrc: int) -> list[str]:
    if out.kind == "video":
        codec = ["-c:v", "copy", "-bsf:v", "h264_mp4toannexb,dump_extra=freq=keyframe"]
        stream = f"0:v:{index}"
    else:
        codec = ["-c:a", "copy"] if out.codec == "aac" else AUDIO_ENCODERS[out.codec]
        stream = f"0:a:{index}"
    return ["-map", stream, *codec, "-ssrc", str(ssrc), "-payload_type", str(out.payload_type),
            "-f", "rtp", f"rtp://127.0.0.1:{out.port}?pkt_size={RTP_PACKET_BYTES}"]


def outputs_args(tracks: Sequence[TrackOut], ssrc_base: int) -> list[str]:
    """The k-th video track takes the source's k-th video stream, the k-th audio track its k-th audio stream."""
    args: list[str] = []
    seen = {"audio": 0, "video": 0}
    for number, out in enumerate(tracks):
        args += _track_args(seen[out.kind], out, (ssrc_base + number) & 0x7FFFFFFF)  # ffmpeg's -ssrc is an int
        seen[out.kind] += 1
    return args


def rtmp_command(ffmpeg: str, play_url: str, tracks: Sequence[TrackOut], ssrc_base: int) -> list[str]:
    """Play the classroom's published stream back from the local RTMP server; give up after 10 s of silence."""
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-rw_timeout", "10000000", *LOW_DELAY_INPUT,
            "-i", play_url, *outputs_args(tracks, ssrc_base)]


def rtsp_command(ffmpeg: str, url: str, tracks: Sequence[TrackOut], ssrc_base: int) -> list[str]:
    """Pull an RTSP camera over TCP (no UDP to open through a school's firewall); 5 s without data ends it."""
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-rtsp_transport", "tcp",
            "-timeout", "5000000", *LOW_DELAY_INPUT, "-i", url, *outputs_args(tracks, ssrc_base)]


def redact(url: str) -> str:
    """An RTSP URL without its credentials, for logs, replies and metrics."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return "<not a URL>"
    authority, slash, path = rest.partition("/")
    host = authority.rpartition("@")[2]
    return f"{scheme}://{'***@' if '@' in authority else ''}{host}{slash}{path}"
