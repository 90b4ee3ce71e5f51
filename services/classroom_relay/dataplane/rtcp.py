"""RTCP (RFC 3550, RFC 4585, RFC 5104): parse what receivers and senders tell us, build what we say.

Receivers' reports give loss, jitter and round-trip time per output; their NACKs are answered from the
packet ring; their PLI/FIR become keyframe requests to the sender of the layer, throttled to one per
layer per ``KEYFRAME_REQUEST_INTERVAL`` so a room of receivers cannot make an encoder emit only
keyframes. Parsing returns ``None`` for anything malformed; it never raises.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

PT_SR = 200
PT_RR = 201
PT_SDES = 202
PT_BYE = 203
PT_APP = 204
PT_RTPFB = 205
PT_PSFB = 206
FMT_GENERIC_NACK = 1
FMT_PLI = 1
FMT_FIR = 4
SDES_CNAME = 1

KEYFRAME_REQUEST_INTERVAL = 0.5
NTP_UNIX_OFFSET = 2_208_988_800
RTP_CLOCK_RATE = 90_000

_COMMON_HEADER = struct.Struct("!BBH")
_U32 = struct.Struct("!I")
_TWO_U32 = struct.Struct("!II")
_REPORT_BLOCK = struct.Struct("!IB3sIIII")
_SENDER_INFO = struct.Struct("!IIIII")  # NTP seconds, NTP fraction, RTP timestamp, packets, octets
_NACK_ITEM = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class ReportBlock:
    reporter_ssrc: int
    source_ssrc: int
    fraction_lost: float  # 0..1, since the previous report
    cumulative_lost: int
    highest_sequence: int
    jitter_timestamp_units: int
    last_sender_report: int  # middle 32 bits of the NTP time of the SR being answered
    delay_since_last_sender_report: int  # 1/65536 s


@dataclass(frozen=True, slots=True)
class SenderReport:
    sender_ssrc: int
    ntp_middle_32: int
    rtp_timestamp: int
    packets: int
    octets: int


@dataclass(frozen=True, slots=True)
class Nack:
    sender_ssrc: int
    media_ssrc: int
    lost_sequences: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class KeyframeRequest:
    sender_ssrc: int
    media_ssrc: int
    kind: str  # "pli" or "fir"


RtcpItem = ReportBlock | SenderReport | Nack | KeyframeRequest


def parse_compound(buffer: bytes | bytearray | memoryview, offset: int, length: int) -> list[RtcpItem] | None:
    """Items of a compound RTCP packet, or None if any part is malformed (then drop it all)."""
    items: list[RtcpItem] = []
    end = offset + length
    position = offset
    if length < 4:
        return None
    while position < end:
        if position + 4 > end:
            return None
        first, packet_type, length_words = _COMMON_HEADER.unpack_from(buffer, position)
        if first >> 6 != 2:
            return None
        packet_end = position + 4 * (length_words + 1)
        if packet_end > end:
            return None
        count = first & 0x1F
        body = position + 4
        if packet_type in (PT_SR, PT_RR):
            blocks_start = body + 4 + (20 if packet_type == PT_SR else 0)
            if blocks_start + 24 * count > packet_end:
                return None
            (reporter_ssrc,) = _U32.unpack_from(buffer, body)
            if packet_type == PT_SR:
                ntp_seconds, ntp_fraction, rtp_timestamp, packets, octets = _SENDER_INFO.unpack_from(buffer, body + 4)
                middle = ((ntp_seconds & 0xFFFF) << 16) | (ntp_fraction >> 16)
                items.append(SenderReport(reporter_ssrc, middle, rtp_timestamp, packets, octets))
            for index in range(count):
                items.append(_parse_report_block(buffer, blocks_start + 24 * index, reporter_ssrc))
        elif packet_type == PT_RTPFB and count == FMT_GENERIC_NACK:
            if body + 8 > packet_end:
                return None
            sender_ssrc, media_ssrc = _TWO_U32.unpack_from(buffer, body)
            lost: list[int] = []
            for item in range(body + 8, packet_end - 3, 4):
                packet_id, bitmask = _NACK_ITEM.unpack_from(buffer, item)
                lost.append(packet_id)
                lost.extend((packet_id + bit + 1) & 0xFFFF for bit in range(16) if bitmask >> bit & 1)
            items.append(Nack(sender_ssrc, media_ssrc, tuple(lost)))
        elif packet_type == PT_PSFB and count == FMT_PLI:
            if body + 8 > packet_end:
                return None
            sender_ssrc, media_ssrc = _TWO_U32.unpack_from(buffer, body)
            items.append(KeyframeRequest(sender_ssrc, media_ssrc, "pli"))
        elif packet_type == PT_PSFB and count == FMT_FIR:
            if body + 16 > packet_end:
                return None
            (sender_ssrc,) = _U32.unpack_from(buffer, body)
            for item in range(body + 8, packet_end - 7, 8):  # FCI: target SSRC, seq nr, reserved
                (target_ssrc,) = _U32.unpack_from(buffer, item)
                items.append(KeyframeRequest(sender_ssrc, target_ssrc, "fir"))
        elif not 192 <= packet_type <= 223:
            return None
        position = packet_end
    return items


def _parse_report_block(buffer: bytes | bytearray | memoryview, offset: int, reporter_ssrc: int) -> ReportBlock:
    source, fraction, lost_bytes, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(buffer, offset)
    cumulative = int.from_bytes(lost_bytes, "big", signed=True)
    return ReportBlock(reporter_ssrc, source, fraction / 256.0, cumulative, highest, jitter, lsr, dlsr)


def ntp_now(wall_time: float | None = None) -> tuple[int, int]:
    now = time.time() if wall_time is None else wall_time
    seconds = int(now) + NTP_UNIX_OFFSET
    fraction = int((now % 1.0) * (1 << 32)) & 0xFFFFFFFF
    return seconds & 0xFFFFFFFF, fraction


def ntp_middle_32(seconds: int, fraction: int) -> int:
    return ((seconds & 0xFFFF) << 16) | (fraction >> 16)


def round_trip_seconds(report: ReportBlock, now_ntp_middle_32: int) -> float | None:
    """RFC 3550 §6.4.1: RTT = arrival − LSR − DLSR, in 1/65536 s. None when no SR was answered yet."""
    if report.last_sender_report == 0:
        return None
    units = (now_ntp_middle_32 - report.last_sender_report - report.delay_since_last_sender_report) & 0xFFFFFFFF
    if units > 0x7FFFFFFF:  # negative: clocks or a forged report; do not report nonsense
        return None
    return units / 65536.0


def _header(packet_type: int, count: int, body_bytes: int) -> bytes:
    return _COMMON_HEADER.pack(0x80 | (count & 0x1F), packet_type, (body_bytes + 4) // 4 - 1)


def _report_block_bytes(block: ReportBlock) -> bytes:
    lost = max(-(1 << 23), min((1 << 23) - 1, block.cumulative_lost)).to_bytes(3, "big", signed=True)
    fraction = max(0, min(255, int(block.fraction_lost * 256)))
    return _REPORT_BLOCK.pack(
        block.source_ssrc,
        fraction,
        lost,
        block.highest_sequence & 0xFFFFFFFF,
        block.jitter_timestamp_units & 0xFFFFFFFF,
        block.last_sender_report,
        block.delay_since_last_sender_report,
    )


def build_sender_report(
    ssrc: int,
    ntp_seconds: int,
    ntp_fraction: int,
    rtp_timestamp: int,
    packets: int,
    octets: int,
    blocks: tuple[ReportBlock, ...] = (),
) -> bytes:
    body = _U32.pack(ssrc) + _SENDER_INFO.pack(
        ntp_seconds, ntp_fraction, rtp_timestamp & 0xFFFFFFFF, packets & 0xFFFFFFFF, octets & 0xFFFFFFFF
    )
    body += b"".join(_report_block_bytes(block) for block in blocks)
    return _header(PT_SR, len(blocks), len(body)) + body


def build_sdes_cname(ssrc: int, cname: str) -> bytes:
    """An SDES packet with one chunk: ``ssrc``'s CNAME (RFC 3550 §6.5.1), the name receivers group streams by
    for lip sync (GStreamer's rtpbin aligns two streams only when their CNAMEs match)."""
    text = cname.encode()[:255]
    chunk = _U32.pack(ssrc) + bytes((SDES_CNAME, len(text))) + text
    chunk += bytes(4 - len(chunk) % 4)  # the item list ends with a null octet, then pads to 32 bits
    return _header(PT_SDES, 1, len(chunk)) + chunk


def build_receiver_report(ssrc: int, blocks: tuple[ReportBlock, ...]) -> bytes:
    body = _U32.pack(ssrc) + b"".join(_report_block_bytes(block) for block in blocks)
    return _header(PT_RR, len(blocks), len(body)) + body


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return _header(PT_PSFB, FMT_PLI, 8) + _TWO_U32.pack(sender_ssrc, media_ssrc)


def build_fir(sender_ssrc: int, media_ssrc: int, command_sequence: int) -> bytes:
    body = _TWO_U32.pack(sender_ssrc, 0) + _U32.pack(media_ssrc) + bytes((command_sequence & 0xFF, 0, 0, 0))
    return _header(PT_PSFB, FMT_FIR, len(body)) + body


def build_nack(sender_ssrc: int, media_ssrc: int, lost_sequences: list[int]) -> bytes:
    """Generic NACK, grouping sequence numbers into PID + 16-bit bitmask items."""
    items = b""
    remaining = sorted(set(seq & 0xFFFF for seq in lost_sequences))
    while remaining:
        packet_id = remaining.pop(0)
        bitmask = 0
        for seq in list(remaining):
            distance = (seq - packet_id) & 0xFFFF
            if 1 <= distance <= 16:
                bitmask |= 1 << (distance - 1)
                remaining.remove(seq)
        items += _NACK_ITEM.pack(packet_id, bitmask)
    body = _TWO_U32.pack(sender_ssrc, media_ssrc) + items
    return _header(PT_RTPFB, FMT_GENERIC_NACK, len(body)) + body


class ReceptionStats:
    """What a receiver of one RTP source knows (RFC 3550 A.1, A.3, A.8): loss and interarrival jitter."""

    __slots__ = (
        "base_sequence",
        "clock_rate",
        "cycles",
        "expected_at_last_report",
        "highest_sequence",
        "jitter",
        "last_transit",
        "received",
        "received_at_last_report",
        "started",
    )

    def __init__(self, clock_rate: int = RTP_CLOCK_RATE) -> None:
        self.clock_rate = clock_rate  # jitter is in the track's own timestamp units (48 kHz audio, 90 kHz video)
        self.started = False
        self.base_sequence = 0
        self.highest_sequence = 0
        self.cycles = 0
        self.received = 0
        self.jitter = 0.0  # in RTP timestamp units
        self.last_transit = 0
        self.expected_at_last_report = 0
        self.received_at_last_report = 0

    def on_packet(self, sequence_number: int, rtp_timestamp: int, arrival_seconds: float) -> None:
        arrival_units = int(arrival_seconds * self.clock_rate)
        transit = arrival_units - rtp_timestamp
        if not self.started:
            self.started = True
            self.base_sequence = sequence_number
            self.highest_sequence = sequence_number
            self.last_transit = transit
        else:
            delta = (sequence_number - self.highest_sequence) & 0xFFFF
            if 0 < delta < 0x8000:
                if sequence_number < self.highest_sequence:
                    self.cycles += 1 << 16
                self.highest_sequence = sequence_number
            difference = abs(transit - self.last_transit)
            self.last_transit = transit
            if difference < self.clock_rate * 10:  # ignore timestamp jumps (new encoder, layer restart)
                self.jitter += (difference - self.jitter) / 16.0
        self.received += 1

    def on_batch(self, sequence_numbers: Sequence[int], rtp_timestamps: Sequence[int], arrival_seconds: float) -> None:
        """``on_packet`` for each packet of a batch (all arrived at ``arrival_seconds``), without a call each."""
        if not sequence_numbers:
            return
        if not self.started:
            self.on_packet(sequence_numbers[0], rtp_timestamps[0], arrival_seconds)
            sequence_numbers, rtp_timestamps = sequence_numbers[1:], rtp_timestamps[1:]
        arrival_units = int(arrival_seconds * self.clock_rate)
        highest, cycles = self.highest_sequence, self.cycles
        jitter, last_transit = self.jitter, self.last_transit
        jump = self.clock_rate * 10
        for sequence_number, rtp_timestamp in zip(sequence_numbers, rtp_timestamps, strict=True):
            if 0 < ((sequence_number - highest) & 0xFFFF) < 0x8000:
                if sequence_number < highest:
                    cycles += 1 << 16
                highest = sequence_number
            transit = arrival_units - rtp_timestamp
            difference = abs(transit - last_transit)
            last_transit = transit
            if difference < jump:
                jitter += (difference - jitter) / 16.0
        self.highest_sequence, self.cycles = highest, cycles
        self.jitter, self.last_transit = jitter, last_transit
        self.received += len(sequence_numbers)

    @property
    def extended_highest(self) -> int:
        return self.cycles + self.highest_sequence

    @property
    def expected(self) -> int:
        return self.extended_highest - self.base_sequence + 1 if self.started else 0

    @property
    def cumulative_lost(self) -> int:
        return max(0, self.expected - self.received)

    @property
    def loss_ratio(self) -> float:
        expected = self.expected
        return self.cumulative_lost / expected if expected > 0 else 0.0

    def interval_fraction_lost(self) -> float:
        """Fraction lost since the previous call (what an RR's "fraction lost" carries)."""
        expected_interval = self.expected - self.expected_at_last_report
        received_interval = self.received - self.received_at_last_report
        self.expected_at_last_report = self.expected
        self.received_at_last_report = self.received
        if expected_interval <= 0:
            return 0.0
        return max(0.0, (expected_interval - received_interval) / expected_interval)

    @property
    def jitter_seconds(self) -> float:
        return self.jitter / self.clock_rate


class KeyframeRequestThrottle:
    """At most one keyframe request per layer per interval."""

    __slots__ = ("interval", "last_sent")

    def __init__(self, interval: float = KEYFRAME_REQUEST_INTERVAL) -> None:
        self.interval = interval
        self.last_sent: dict[int, float] = {}

    def allow(self, layer_ssrc: int, now: float) -> bool:
        last = self.last_sent.get(layer_ssrc)
        if last is not None and now - last < self.interval:
            return False
        self.last_sent[layer_ssrc] = now
        return True

    def forget(self, layer_ssrc: int) -> None:
        self.last_sent.pop(layer_ssrc, None)
