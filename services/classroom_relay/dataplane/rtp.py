"""RTP fixed-header parsing (RFC 3550 §5.1) into a preallocated struct, with counted drop reasons.

Parsing never raises: it returns a reason code, and the caller counts it. The loop is the only
place that decides what a bad packet costs (a counter increment), so a hostile sender cannot
crash the process or make it allocate.
"""

from __future__ import annotations

import functools
import struct

RTP_VERSION = 2
RTP_FIXED_HEADER_BYTES = 12
MAX_DATAGRAM_BYTES = 1500  # bigger datagrams are truncated by the ring slot and dropped as too_large

_FIXED_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")

# Reason codes: index into DROP_REASONS. 0 means "valid".
OK = 0
TOO_SHORT = 1
BAD_VERSION = 2
BAD_CSRC_LENGTH = 3
BAD_EXTENSION_LENGTH = 4
BAD_PADDING = 5
EMPTY_PAYLOAD = 6
TOO_LARGE = 7
UNKNOWN_SOURCE = 8
SSRC_NOT_PINNED = 9
SSRC_CONFLICT = 10
TOKEN_INVALID = 11
TOKEN_EXPIRED = 12
TOKEN_BAD_SIGNATURE = 13
TOKEN_WRONG_BINDING = 14
NOT_ROUTED = 15
BAD_RTCP = 16
LATE_LAYER_PACKET = 17
PACER_OVERFLOW = 18
DESTINATION_UNREACHABLE = 19
SEND_FAILED = 20
SENDER_TAKEN = 21  # a second address for a track that already has a live sender
RTCP_WRONG_PORT = 22  # RTCP from a receiver's address but not from its RTP port or port + 1
RTCP_UNKNOWN_SOURCE = 23  # RTCP on an output's socket from an address that is not its receiver
LIMIT_REACHED = 24  # a session, member or output beyond the data plane's caps
PORTS_EXHAUSTED = 25  # no free port left in the media port range

DROP_REASONS: tuple[str, ...] = (
    "ok",
    "too_short",
    "bad_version",
    "bad_csrc_length",
    "bad_extension_length",
    "bad_padding",
    "empty_payload",
    "too_large",
    "unknown_source",
    "ssrc_not_pinned",
    "ssrc_conflict",
    "token_invalid",
    "token_expired",
    "token_bad_signature",
    "token_wrong_binding",
    "not_routed",
    "bad_rtcp",
    "late_layer_packet",
    "pacer_overflow",
    "destination_unreachable",
    "send_failed",
    "sender_taken",
    "rtcp_wrong_port",
    "rtcp_unknown_source",
    "limit_reached",
    "ports_exhausted",
)


class DropCounters:
    """Packets dropped, by reason. A plain list of ints: incrementing must cost next to nothing."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: list[int] = [0] * len(DROP_REASONS)

    def count(self, reason: int, packets: int = 1) -> None:
        self.counts[reason] += packets

    def as_dict(self) -> dict[str, int]:
        return {name: self.counts[code] for code, name in enumerate(DROP_REASONS) if code != OK}


class RtpHeader:
    """One reusable parse result; the loop owns a single instance and overwrites it per packet."""

    __slots__ = (
        "marker",
        "payload_length",
        "payload_offset",
        "payload_type",
        "sequence_number",
        "ssrc",
        "timestamp",
    )

    def __init__(self) -> None:
        self.marker = False
        self.payload_type = 0
        self.sequence_number = 0
        self.timestamp = 0
        self.ssrc = 0
        self.payload_offset = 0
        self.payload_length = 0


# Per packet of a batch: first octet, second octet, sequence number, timestamp, SSRC, first payload octet.
BATCH_FIELDS = 6


@functools.cache
def batch_header_struct(count: int, slot_bytes: int) -> struct.Struct:
    """Unpacks the fixed header (+ first payload octet) of ``count`` consecutive ring slots in one call.

    The fields sit at the same place in every RTP packet, so the values are right for any valid packet;
    for anything else they are garbage the caller must not use before validating the packet.
    """
    return struct.Struct("!" + f"BBHIIB{slot_bytes - RTP_FIXED_HEADER_BYTES - 1}x" * count)


def looks_like_rtcp(buffer: bytes | bytearray | memoryview, offset: int, length: int) -> bool:
    """RFC 5761 §4 demultiplexing: RTCP packet types 192–223 sit where RTP has marker+payload type."""
    return length >= 2 and 192 <= buffer[offset + 1] <= 223


def parse_rtp(buffer: bytes | bytearray | memoryview, offset: int, length: int, header: RtpHeader) -> int:
    """Fill ``header`` from ``buffer[offset:offset+length]``; return OK or a drop reason code."""
    if length < RTP_FIXED_HEADER_BYTES:
        return TOO_SHORT
    first, second, sequence_number, timestamp, ssrc = _FIXED_HEADER.unpack_from(buffer, offset)
    if first >> 6 != RTP_VERSION:
        return BAD_VERSION
    payload_offset = RTP_FIXED_HEADER_BYTES + 4 * (first & 0x0F)
    if payload_offset > length:
        return BAD_CSRC_LENGTH
    if first & 0x10:  # header extension: 4-byte header then `words` 32-bit words
        if payload_offset + 4 > length:
            return BAD_EXTENSION_LENGTH
        _profile, words = _EXTENSION_HEADER.unpack_from(buffer, offset + payload_offset)
        payload_offset += 4 + 4 * words
        if payload_offset > length:
            return BAD_EXTENSION_LENGTH
    payload_end = length
    if first & 0x20:  # padding: last octet says how many octets to ignore, itself included
        padding = buffer[offset + length - 1]
        if padding == 0 or payload_offset + padding > length:
            return BAD_PADDING
        payload_end -= padding
    if payload_end <= payload_offset:
        return EMPTY_PAYLOAD
    header.marker = bool(second & 0x80)
    header.payload_type = second & 0x7F
    header.sequence_number = sequence_number
    header.timestamp = timestamp
    header.ssrc = ssrc
    header.payload_offset = offset + payload_offset
    header.payload_length = payload_end - payload_offset
    return OK


def build_rtp(
    payload: bytes,
    *,
    sequence_number: int,
    timestamp: int,
    ssrc: int,
    payload_type: int = 96,
    marker: bool = False,
) -> bytes:
    """A plain RTP packet, for tests and the benchmark (not used on the hot path)."""
    second = (0x80 if marker else 0) | (payload_type & 0x7F)
    return _FIXED_HEADER.pack(0x80, second, sequence_number & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload
