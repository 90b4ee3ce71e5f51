"""RTCP parsing and building, receiver statistics and keyframe-request throttling."""

from __future__ import annotations

import pytest

from services.classroom_relay.dataplane import rtcp


def test_sender_report_round_trip() -> None:
    block = rtcp.ReportBlock(1, 2, 0.25, 17, 70_000, 450, 0x12345678, 65536)
    packet = rtcp.build_sender_report(9, 3_900_000_000, 0x80000000, 1234, 10, 12_000, (block,))
    items = rtcp.parse_compound(packet, 0, len(packet))
    assert items is not None and len(items) == 2
    sender_report, parsed_block = items
    assert isinstance(sender_report, rtcp.SenderReport)
    assert sender_report.ntp_middle_32 == rtcp.ntp_middle_32(3_900_000_000, 0x80000000)
    assert (sender_report.rtp_timestamp, sender_report.packets, sender_report.octets) == (1234, 10, 12_000)
    assert parsed_block == rtcp.ReportBlock(9, 2, 0.25, 17, 70_000, 450, 0x12345678, 65536)


@pytest.mark.parametrize("cname", ["m", "master", "classroom-12", "x" * 300])
def test_sender_report_with_sdes_cname(cname: str) -> None:
    sdes = rtcp.build_sdes_cname(9, cname)
    text = cname.encode()[:255]
    assert len(sdes) % 4 == 0 and sdes[1] == rtcp.PT_SDES and sdes[0] & 0x1F == 1
    assert (int.from_bytes(sdes[2:4], "big") + 1) * 4 == len(sdes)
    assert sdes[4:8] == (9).to_bytes(4, "big") and sdes[8] == rtcp.SDES_CNAME and sdes[9] == len(text)
    assert sdes[10 : 10 + len(text)] == text and sdes[10 + len(text)] == 0  # a null octet ends the items
    compound = rtcp.build_sender_report(9, 3_900_000_000, 0, 1, 1, 1) + sdes
    items = rtcp.parse_compound(compound, 0, len(compound))
    assert items is not None and [type(item) for item in items] == [rtcp.SenderReport]


def test_compound_receiver_report_nack_pli_fir() -> None:
    block = rtcp.ReportBlock(5, 77, 0.5, -3, 10, 900, 0, 0)
    compound = (
        rtcp.build_receiver_report(5, (block,))
        + rtcp.build_nack(5, 77, [100, 101, 116, 117, 65535])
        + rtcp.build_pli(5, 77)
        + rtcp.build_fir(5, 78, 3)
    )
    items = rtcp.parse_compound(compound, 0, len(compound))
    assert items is not None
    report, nack, pli, fir = items
    assert isinstance(report, rtcp.ReportBlock) and report.cumulative_lost == -3 and report.fraction_lost == 0.5
    assert isinstance(nack, rtcp.Nack) and sorted(nack.lost_sequences) == [100, 101, 116, 117, 65535]
    assert pli == rtcp.KeyframeRequest(5, 77, "pli")
    assert fir == rtcp.KeyframeRequest(5, 78, "fir")


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x81\xc9",
        b"\x41\xc9\x00\x01\x00\x00\x00\x05",  # version 1
        b"\x81\xc9\x00\x07\x00\x00\x00\x05",  # length beyond the datagram
        b"\x82\xc9\x00\x01\x00\x00\x00\x05",  # says two report blocks, has none
        b"\x81\xcd\x00\x01\x00\x00\x00\x05",  # NACK without media SSRC
        b"\x80\x10\x00\x00",  # not an RTCP packet type
    ],
)
def test_malformed_rtcp_is_refused_whole(packet: bytes) -> None:
    assert rtcp.parse_compound(packet, 0, len(packet)) is None


def test_round_trip_time_from_lsr_and_dlsr() -> None:
    seconds, fraction = rtcp.ntp_now(1_700_000_000.0)
    sent_middle = rtcp.ntp_middle_32(seconds, fraction)
    later_seconds, later_fraction = rtcp.ntp_now(1_700_000_000.25)
    block = rtcp.ReportBlock(1, 2, 0, 0, 0, 0, sent_middle, int(0.2 * 65536))
    rtt = rtcp.round_trip_seconds(block, rtcp.ntp_middle_32(later_seconds, later_fraction))
    assert rtt == pytest.approx(0.05, abs=0.001)
    assert rtcp.round_trip_seconds(rtcp.ReportBlock(1, 2, 0, 0, 0, 0, 0, 0), 123) is None
    future = rtcp.ReportBlock(1, 2, 0, 0, 0, 0, sent_middle + 65536, 0)
    assert rtcp.round_trip_seconds(future, sent_middle) is None


def test_reception_stats_loss_wrap_and_jitter() -> None:
    stats = rtcp.ReceptionStats()
    sequence = 65530
    for index in range(20):
        if index in (3, 4):  # two losses
            sequence = (sequence + 1) & 0xFFFF
            continue
        arrival = index * 0.02 + (0.005 if index % 2 else 0.0)  # alternating 5 ms late
        stats.on_packet(sequence, index * 1800, arrival)
        sequence = (sequence + 1) & 0xFFFF
    assert stats.expected == 20
    assert stats.cumulative_lost == 2
    assert stats.loss_ratio == pytest.approx(0.1)
    assert stats.extended_highest == (1 << 16) + 13
    assert 0.001 < stats.jitter_seconds < 0.006
    assert stats.interval_fraction_lost() == pytest.approx(0.1)
    assert stats.interval_fraction_lost() == 0.0


def test_keyframe_requests_throttled_per_layer() -> None:
    throttle = rtcp.KeyframeRequestThrottle(interval=0.5)
    assert throttle.allow(1, 10.0)
    assert not throttle.allow(1, 10.4)
    assert throttle.allow(2, 10.4)  # another layer has its own allowance
    assert throttle.allow(1, 10.5)
