"""SDP (RFC 8866) for a receiving classroom, so any plain RTP receiver can play what the relay sends.

``ffmpeg -protocol_whitelist file,udp,rtp -i branch.sdp`` reads it: the ``m=`` port is where the
receiver listens for RTP (RTCP on port + 1), ``c=`` names the relay the media comes from, and
``a=rtcp`` tells RFC 3605 receivers where to send their reports.
"""

from __future__ import annotations

import ipaddress
import time

DEFAULT_PAYLOAD_TYPE = 96
H264_CLOCK_RATE = 90_000


def build_receiver_sdp(
    *,
    relay_host: str,
    receive_port: int,
    relay_rtcp_port: int | None = None,
    payload_type: int = DEFAULT_PAYLOAD_TYPE,
    session_name: str = "lianxiao classroom",
    ssrc: int | None = None,
    session_version: int | None = None,
) -> str:
    """SDP text for one receiving classroom of an H.264 stream."""
    address = ipaddress.ip_address(relay_host)
    if not 96 <= payload_type <= 127:
        raise ValueError("a dynamic RTP payload type is 96..127")
    if not 0 < receive_port < 65535:
        raise ValueError("receive_port must leave room for RTCP on port + 1")
    family = "IP4" if address.version == 4 else "IP6"
    version = session_version if session_version is not None else int(time.time())
    safe_name = " ".join(session_name.split()) or "-"  # SDP lines cannot carry CR/LF
    lines = [
        "v=0",
        f"o=- {version} {version} IN {family} {address}",
        f"s={safe_name}",
        f"c=IN {family} {address}",
        "t=0 0",
        f"m=video {receive_port} RTP/AVP {payload_type}",
        f"a=rtpmap:{payload_type} H264/{H264_CLOCK_RATE}",
        # packetization-mode=1: FU-A and STAP-A, which encoders use for anything above one MTU.
        f"a=fmtp:{payload_type} packetization-mode=1",
        "a=recvonly",
    ]
    if relay_rtcp_port:
        lines.append(f"a=rtcp:{relay_rtcp_port} IN {family} {address}")
    if ssrc is not None:
        lines.append(f"a=ssrc:{ssrc & 0xFFFFFFFF} cname:lianxiao-relay")
    return "\r\n".join(lines) + "\r\n"
