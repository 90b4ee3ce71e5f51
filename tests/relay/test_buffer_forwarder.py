"""Packet ring / NACK cache and per-output header rewriting."""

from __future__ import annotations

import itertools

import pytest

from services.classroom_relay.dataplane import rtp
from services.classroom_relay.dataplane.buffer import OutputHistory, PacketRing
from services.classroom_relay.dataplane.forwarder import NO_LAYER, Forwarder


def test_ring_reuses_slots_and_invalidates_old_references() -> None:
    ring = PacketRing(slot_count=4, slot_bytes=64)
    first = ring.store(b"a" * 10)
    serial = ring.stamp(first, ssrc=1, sequence_number=5, timestamp=9, keyframe=False)
    assert ring.holds(first, serial)
    assert bytes(ring.view[ring.offset(first) : ring.offset(first) + 10]) == b"a" * 10
    for _ in range(4):  # wrap around once: the slot is overwritten and stamped again
        slot = ring.store(b"b" * 10)
        ring.stamp(slot, 1, 6, 9, False)
    assert not ring.holds(first, serial)


def test_ring_truncates_oversized_store() -> None:
    ring = PacketRing(slot_count=2, slot_bytes=16)
    slot = ring.store(b"x" * 100)
    assert ring.length[slot] == 16


def test_output_history_finds_only_live_packets() -> None:
    ring = PacketRing(slot_count=8, slot_bytes=32)
    history = OutputHistory(size=4)
    slot = ring.store(b"p")
    serial = ring.stamp(slot, 1, 100, 0, False)
    history.remember(out_sequence=500, slot=slot, serial=serial)
    assert history.find(500, ring) == slot
    assert history.find(501, ring) == -1
    history.remember(504, slot, serial)  # same index (504 & 3 == 500 & 3): the older entry is gone
    assert history.find(500, ring) == -1
    with pytest.raises(ValueError):
        OutputHistory(size=6)


def header_of(buffer: bytearray) -> rtp.RtpHeader:
    header = rtp.RtpHeader()
    assert rtp.parse_rtp(buffer, 0, len(buffer), header) == rtp.OK
    return header


def test_rewrite_gives_one_continuous_stream_across_a_layer_switch() -> None:
    forwarder = Forwarder(out_ssrc=0xABCDEF01)
    assert forwarder.layer_ssrc == NO_LAYER
    forwarder.switch_to(layer_ssrc=11, in_sequence=1000, in_timestamp=50_000, now=10.0)
    seen = []
    for index in range(3):
        packet = bytearray(rtp.build_rtp(b"x", sequence_number=1000 + index, timestamp=50_000 + 3000 * index, ssrc=11))
        forwarder.rewrite(packet, 0, 1000 + index, 50_000 + 3000 * index, now=10.0 + 0.04 * index)
        seen.append(header_of(packet))
    # Switch to a layer with unrelated numbering 0.04 s after the last packet.
    forwarder.switch_to(layer_ssrc=22, in_sequence=7, in_timestamp=4_000_000_000, now=10.12)
    packet = bytearray(rtp.build_rtp(b"y", sequence_number=7, timestamp=4_000_000_000, ssrc=22))
    forwarder.rewrite(packet, 0, 7, 4_000_000_000, now=10.12)
    seen.append(header_of(packet))

    assert {header.ssrc for header in seen} == {0xABCDEF01}
    sequences = [header.sequence_number for header in seen]
    assert [(b - a) & 0xFFFF for a, b in itertools.pairwise(sequences)] == [1, 1, 1]
    timestamps = [header.timestamp for header in seen]
    assert (timestamps[1] - timestamps[0]) & 0xFFFFFFFF == 3000
    assert (timestamps[3] - timestamps[2]) & 0xFFFFFFFF == pytest.approx(0.04 * 90_000, abs=2)
    assert forwarder.switches == 2


def test_source_gaps_are_preserved_and_late_packets_do_not_rewind() -> None:
    forwarder = Forwarder(out_ssrc=1)
    forwarder.switch_to(5, in_sequence=65534, in_timestamp=0, now=0.0)
    buffer = bytearray(rtp.build_rtp(b"x", sequence_number=0, timestamp=0, ssrc=5))
    first = forwarder.rewrite(buffer, 0, 65534, 0, 0.0)
    after_gap = forwarder.rewrite(buffer, 0, 2, 0, 0.0)  # 65535, 0, 1 lost (wraps)
    assert (after_gap - first) & 0xFFFF == 4
    late = forwarder.rewrite(buffer, 0, 65535, 0, 0.0)
    assert (late - first) & 0xFFFF == 1
    assert forwarder.last_out_sequence == after_gap


@pytest.mark.parametrize(
    ("keyframe_instant", "expected_step"),
    [
        (0.0, 1),  # the low layer's keyframe of the instant whose high-layer frame was just sent
        (0.04, 3600),  # the next frame
        (0.12, 3 * 3600),  # two frames of the old layer never went out (the pacer's queue was cleared)
        (1.3, 3600),  # more than a second apart: two clocks that disagree, not trusted; the frame step
        (-0.5, 3600),  # before the last frame sent: likewise
    ],
)
def test_a_switch_continues_where_the_senders_reports_put_the_new_keyframe(
    keyframe_instant: float, expected_step: int
) -> None:
    """Both layers' sender reports (one sender clock) say when each timestamp was captured: the output's
    timestamps follow that, so the relay's own reports, which carry the followed layer's mapping, stay true
    across the switch (feedback.py)."""
    reports = {11: (1_000.0, 50_000), 22: (1_000.0, 4_000_000_000)}  # ssrc -> (report time s, its timestamp)

    def source_ticks(ssrc: int, timestamp: int) -> float | None:
        seconds, reported = reports[ssrc]
        return seconds * 90_000 + ((timestamp - reported + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)

    forwarder = Forwarder(out_ssrc=1)
    forwarder.source_ticks = source_ticks
    forwarder.switch_to(11, in_sequence=10, in_timestamp=50_000, now=5.0, frame_ticks=3600)
    packet = bytearray(rtp.build_rtp(b"x", sequence_number=10, timestamp=50_000, ssrc=11))
    forwarder.rewrite(packet, 0, 10, 50_000, now=5.0)
    first = header_of(packet).timestamp
    new_timestamp = (4_000_000_000 + int(keyframe_instant * 90_000)) & 0xFFFFFFFF
    forwarder.switch_to(22, in_sequence=500, in_timestamp=new_timestamp, now=5.05, frame_ticks=3600)
    packet = bytearray(rtp.build_rtp(b"y", sequence_number=500, timestamp=new_timestamp, ssrc=22))
    forwarder.rewrite(packet, 0, 500, new_timestamp, now=5.05)
    assert (header_of(packet).timestamp - first) & 0xFFFFFFFF == expected_step


def test_a_switch_without_sender_reports_continues_one_frame_later() -> None:
    forwarder = Forwarder(out_ssrc=1)
    forwarder.source_ticks = lambda _ssrc, _timestamp: None
    forwarder.switch_to(11, in_sequence=10, in_timestamp=50_000, now=5.0, frame_ticks=3600)
    forwarder.rewrite(bytearray(rtp.build_rtp(b"x", sequence_number=10, timestamp=50_000, ssrc=11)), 0, 10, 50_000, 5.0)
    last = forwarder.last_out_timestamp
    forwarder.switch_to(22, in_sequence=500, in_timestamp=123, now=5.01, frame_ticks=3600)
    assert forwarder.out_timestamp(123) == (last + 3600) & 0xFFFFFFFF


@pytest.mark.parametrize("gaps", [False, True])
def test_whole_run_header_rewrite_matches_packet_by_packet(gaps: bool) -> None:
    """``PacketRing.rewrite_headers`` (strided slices, offsets added in lanes) writes exactly the bytes
    ``Forwarder.rewrite_run`` writes, across 16- and 32-bit wrap-around, in stretches of consecutive slots."""
    from services.classroom_relay.dataplane.buffer import HeaderLanes
    from services.classroom_relay.dataplane.streams import _slot_runs

    chooser = itertools.cycle([True, True, False] if gaps else [True])
    slots = [slot for slot in range(40, 120) if next(chooser)][:48]
    sequences = [(0xFFF0 + index) & 0xFFFF for index in range(len(slots))]  # wraps past 65535
    timestamps = [(0xFFFFF000 + 3000 * (index // 5)) & 0xFFFFFFFF for index in range(len(slots))]
    payload = bytes(range(256)) * 6
    expected, actual = PacketRing(slot_count=128), PacketRing(slot_count=128)
    for ring in (expected, actual):
        for slot in slots:
            ring.data[slot * ring.slot_bytes : (slot + 1) * ring.slot_bytes] = payload[: ring.slot_bytes]
    forwarder = Forwarder(out_ssrc=0xCAFEF00D)
    forwarder.switch_to(0x1000, sequences[0], timestamps[0], now=0.0)
    forwarder.sequence_offset, forwarder.timestamp_offset = 0xABCD, 0xF0000000  # both wrap the sums
    offsets = [slot * expected.slot_bytes + 2 for slot in slots]
    forwarder.rewrite_run(expected.data, offsets, sequences, timestamps, not gaps, 0.0)
    runs = _slot_runs(slots if gaps else range(slots[0], slots[0] + len(slots)))
    assert len(runs) == (len(slots) + 1) // 2 if gaps else len(runs) == 1
    actual.rewrite_headers(runs, HeaderLanes(sequences, timestamps), 0xABCD, 0xF0000000, 0xCAFEF00D)
    assert actual.data == expected.data
    first = slots[0] * actual.slot_bytes
    assert rtp.build_rtp(b"", sequence_number=(0xFFF0 + 0xABCD) & 0xFFFF,
                         timestamp=(0xFFFFF000 + 0xF0000000) & 0xFFFFFFFF, ssrc=0xCAFEF00D)[2:12] == bytes(
        actual.data[first + 2 : first + 12]
    )  # fmt: skip


def test_history_of_a_run_with_upstream_gaps_answers_only_what_was_sent() -> None:
    """A run whose numbers skip (loss before the relay) is remembered without a per-packet loop: each sent
    number finds its slot, a skipped number finds nothing."""
    ring = PacketRing(slot_count=64, slot_bytes=64)
    slots = list(range(10, 20))
    serials = [ring.stamp(slot, 1, 0, 0, False) for slot in slots]
    sequences = [100, 101, 103, 104, 105, 108, 109, 110, 111, 115]
    history, reference = OutputHistory(64), OutputHistory(64)
    history.remember_run(7, sequences, slots, serials, in_order=False, increasing=True)
    reference.remember_run(7, sequences, slots, serials, in_order=False)  # the per-packet loop
    assert (history.slots, history.serials, history.in_sequences, history.offsets) == (
        reference.slots, reference.serials, reference.in_sequences, reference.offsets
    )  # fmt: skip
    for sequence, slot in zip(sequences, slots, strict=True):
        assert history.find(sequence + 7, ring) == slot
    assert history.find(102 + 7, ring) == -1
