"""RTP header parsing/validation and H.264 keyframe detection."""

from __future__ import annotations

import struct

import pytest

from services.classroom_relay.dataplane import rtp
from services.classroom_relay.dataplane.h264 import is_keyframe_start


def parse(packet: bytes) -> tuple[int, rtp.RtpHeader]:
    header = rtp.RtpHeader()
    buffer = bytearray(b"\xee" * 7 + packet)  # parse at an offset, as the loop does inside the ring
    return rtp.parse_rtp(buffer, 7, len(packet), header), header


def test_plain_packet_fields() -> None:
    packet = rtp.build_rtp(b"\x65abc", sequence_number=65535, timestamp=0xFFFFFFFF, ssrc=0xDEADBEEF, marker=True)
    reason, header = parse(packet)
    assert reason == rtp.OK
    assert (header.sequence_number, header.timestamp, header.ssrc) == (65535, 0xFFFFFFFF, 0xDEADBEEF)
    assert header.marker and header.payload_type == 96
    assert (header.payload_offset, header.payload_length) == (7 + 12, 4)


def test_csrcs_extension_and_padding_are_skipped() -> None:
    csrcs = struct.pack("!II", 1, 2)
    extension = struct.pack("!HH", 0xBEDE, 1) + b"\x10\xaa\x00\x00"
    payload = b"\x41" + b"p" * 5
    padding = b"\x00\x00\x03"
    first = 0x80 | 0x20 | 0x10 | 2  # version 2, padding, extension, two CSRCs
    packet = struct.pack("!BBHII", first, 96, 10, 20, 30) + csrcs + extension + payload + padding
    reason, header = parse(packet)
    assert reason == rtp.OK
    assert header.payload_offset == 7 + 12 + 8 + 8
    assert header.payload_length == len(payload)


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"\x80\x60\x00", rtp.TOO_SHORT),
        (struct.pack("!BBHII", 0x40, 96, 1, 1, 1) + b"x", rtp.BAD_VERSION),
        (struct.pack("!BBHII", 0x8F, 96, 1, 1, 1) + b"x" * 8, rtp.BAD_CSRC_LENGTH),
        (struct.pack("!BBHII", 0x90, 96, 1, 1, 1) + b"\xbe\xde", rtp.BAD_EXTENSION_LENGTH),
        (struct.pack("!BBHII", 0x90, 96, 1, 1, 1) + struct.pack("!HH", 0xBEDE, 50) + b"x", rtp.BAD_EXTENSION_LENGTH),
        (struct.pack("!BBHII", 0xA0, 96, 1, 1, 1) + b"xy\x00", rtp.BAD_PADDING),
        (struct.pack("!BBHII", 0xA0, 96, 1, 1, 1) + b"xy\x09", rtp.BAD_PADDING),
        (struct.pack("!BBHII", 0x80, 96, 1, 1, 1), rtp.EMPTY_PAYLOAD),
        (struct.pack("!BBHII", 0xA0, 96, 1, 1, 1) + b"x\x02", rtp.EMPTY_PAYLOAD),
    ],
)
def test_malformed_packets_get_their_reason(packet: bytes, reason: int) -> None:
    assert parse(packet)[0] == reason


def test_drop_counters_by_name() -> None:
    counters = rtp.DropCounters()
    counters.count(rtp.BAD_VERSION)
    counters.count(rtp.BAD_VERSION, 2)
    counted = counters.as_dict()
    assert counted["bad_version"] == 3
    assert "ok" not in counted
    assert sum(counted.values()) == 3


def test_rtcp_demultiplexing() -> None:
    assert rtp.looks_like_rtcp(b"\x81\xc9\x00\x07", 0, 4)  # RR
    assert not rtp.looks_like_rtcp(rtp.build_rtp(b"x", sequence_number=1, timestamp=1, ssrc=1), 0, 13)


def keyframe(payload: bytes) -> bool:
    buffer = b"\x00\x00" + payload
    return is_keyframe_start(buffer, 2, len(payload))


def test_single_nal_keyframes() -> None:
    assert keyframe(b"\x65\x88")  # IDR slice
    assert keyframe(b"\x67\x42")  # SPS: starts the keyframe access unit when repeated in-band
    assert not keyframe(b"\x41\x9a")  # non-IDR slice
    assert not keyframe(b"\x68\xce")  # PPS alone
    assert not keyframe(b"")


def test_fu_a_only_start_fragment_of_idr() -> None:
    assert keyframe(b"\x7c\x85rest")  # FU-A, start bit, IDR
    assert not keyframe(b"\x7c\x05rest")  # FU-A middle fragment of IDR
    assert not keyframe(b"\x7c\x45rest")  # FU-A end fragment
    assert not keyframe(b"\x7c\x81rest")  # FU-A start of a non-IDR slice
    assert not keyframe(b"\x7c")  # truncated


def test_stap_a_containing_sps_or_idr() -> None:
    sps, pps, idr, sei = b"\x67\x42\x00\x1f", b"\x68\xce\x3c\x80", b"\x65\x88\x84", b"\x06\x05"

    def stap(*nals: bytes) -> bytes:
        return b"\x78" + b"".join(struct.pack("!H", len(nal)) + nal for nal in nals)

    assert keyframe(stap(sps, pps))
    assert keyframe(stap(sei, idr))
    assert not keyframe(stap(sei, pps))
    assert not keyframe(b"\x78" + struct.pack("!H", 40) + sps)  # size runs past the end: distrusted
    assert not keyframe(b"\x78\x00\x00" + sps)  # zero-length NAL
