"""SDP (RFC 8866) for a receiving classroom, so any plain RTP receiver can play what the relay sends it.

One ``m=`` section per track the classroom receives, each on its own even port (RTCP on port + 1), with
``a=mid`` (RFC 5888) and ``a=label`` (RFC 4574) naming the source classroom and track
(``classroom-12/camera``), the codec's ``a=rtpmap``/``a=fmtp``, and ``a=rtcp`` (RFC 3605) naming the data
plane's socket for that output — where the receiver's reports, NACKs and PLIs are accepted.
``ffmpeg -protocol_whitelist file,udp,rtp -i classroom.sdp`` plays it.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ENCODING_NAMES = {"opus": "opus", "pcma": "PCMA", "pcmu": "PCMU", "aac": "mpeg4-generic", "h264": "H264"}


@dataclass(frozen=True)
class Section:
    """One received track: where it arrives, what it is, where its RTCP goes."""

    port: int
    track: dict[str, Any]  # tracks.complete() shape
    label: str
    relay_rtcp: tuple[str, int] | None = None
    ssrc: int | None = None
    # RFC 5576: streams to play in sync share a CNAME; the relay's RTCP names the source classroom as CNAME.
    cname: str | None = None


def _rtpmap(track: dict[str, Any]) -> str:
    codec, payload_type = track["codec"], track["payload_type"]
    name = ENCODING_NAMES[codec]
    if codec == "opus":
        return f"{payload_type} {name}/48000/2"  # RFC 7587: always 48000/2, whatever is sent
    if track["kind"] == "audio" and track.get("channels", 1) > 1:
        return f"{payload_type} {name}/{track['clock_rate']}/{track['channels']}"
    return f"{payload_type} {name}/{track['clock_rate']}"


def _fmtp(track: dict[str, Any]) -> str | None:
    codec, payload_type = track["codec"], track["payload_type"]
    if codec == "h264":
        # packetization-mode=1: FU-A and STAP-A, which encoders use for anything above one MTU.
        return f"{payload_type} packetization-mode=1"
    if codec == "aac":
        # RFC 3640 AAC-hbr, as ffmpeg and GStreamer send AAC over RTP.
        return (f"{payload_type} streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;"
                f"indexdeltalength=3;config={track['config']}")
    if codec == "opus":
        return f"{payload_type} sprop-stereo={1 if track.get('channels', 2) > 1 else 0}"
    return None


def _family(address: Any) -> str:
    return "IP4" if address.version == 4 else "IP6"


def build_receiver_sdp(
    *, relay_host: str, sections: Sequence[Section], session_name: str = "lianxiao classroom",
    session_version: int | None = None,
) -> str:
    """SDP text for one receiving classroom; `relay_host` is where the media comes from."""
    address = ipaddress.ip_address(relay_host)
    version = session_version if session_version is not None else int(time.time())
    safe_name = " ".join(session_name.split()) or "-"  # SDP lines cannot carry CR/LF
    lines = [
        "v=0",
        f"o=- {version} {version} IN {_family(address)} {address}",
        f"s={safe_name}",
        f"c=IN {_family(address)} {address}",
        "t=0 0",
    ]
    for mid, section in enumerate(sections):
        track = section.track
        if not 0 < section.port < 65535 or section.port % 2:
            raise ValueError(f"track {section.label}: RTP takes an even port below 65535, not {section.port}")
        lines.append(f"m={track['kind']} {section.port} RTP/AVP {track['payload_type']}")
        lines.append(f"a=rtpmap:{_rtpmap(track)}")
        fmtp = _fmtp(track)
        if fmtp:
            lines.append(f"a=fmtp:{fmtp}")
        lines += [f"a=mid:{mid}", f"a=label:{section.label}", "a=recvonly"]
        if section.relay_rtcp is not None:
            rtcp_host, rtcp_port = section.relay_rtcp
            rtcp_address = ipaddress.ip_address(rtcp_host)
            lines.append(f"a=rtcp:{rtcp_port} IN {_family(rtcp_address)} {rtcp_address}")
        if section.ssrc is not None:
            lines.append(f"a=ssrc:{section.ssrc & 0xFFFFFFFF} cname:{section.cname or section.label}")
    return "\r\n".join(lines) + "\r\n"
