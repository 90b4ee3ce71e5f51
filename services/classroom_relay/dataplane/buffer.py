"""The packet ring: where datagrams are received, and the retransmission cache at the same time.

Datagrams are received straight into preallocated slots of one bytearray, so the cache costs no
copy. Slots are reused oldest-first; every packet gets a serial number, and a cached reference
(slot, serial) is only valid while the slot still holds that serial.

Each output keeps an ``OutputHistory``: a fixed-size ring keyed by the *outgoing* sequence number,
so a NACK from a receiver (which only knows rewritten sequence numbers) finds the original packet.
"""

from __future__ import annotations

import functools
import struct
from collections import deque
from collections.abc import Sequence
from itertools import repeat

from .rtp import MAX_DATAGRAM_BYTES

MIN_VECTOR_RUN = 8  # shorter runs are rewritten packet by packet (forwarder.py): as fast below this


@functools.cache
def _lanes(count: int) -> tuple[struct.Struct, int]:
    """Packs ``count`` (sequence number, timestamp) pairs into 16-byte big-endian lanes laid out as
    [2 spare | sequence | 4 spare | timestamp | 4 for the SSRC]; and the number with a 1 in every lane (an
    offset times it: the offset in every lane)."""
    return struct.Struct("!" + "xxHxxxxIxxxx" * count), int.from_bytes((1).to_bytes(16, "big") * count, "big")


class HeaderLanes:
    """The sequence numbers and timestamps of a run as one big integer, a 16-byte lane per packet with room
    above each field: an output's offsets and SSRC go into every lane with one addition, and the result's
    bytes hold each packet's new fields in network order (``PacketRing.rewrite_headers``). Made once per
    batch and layer, shared by the outputs following it."""

    __slots__ = ("count", "ones", "value")

    def __init__(self, sequences: Sequence[int], timestamps: Sequence[int]) -> None:
        count = self.count = len(sequences)
        packer, self.ones = _lanes(count)
        fields = [0] * (2 * count)
        fields[0::2] = sequences
        fields[1::2] = timestamps
        self.value = int.from_bytes(packer.pack(*fields), "big")


class PacketRing:
    __slots__ = (
        "data",
        "keyframe",
        "length",
        "next_serial",
        "next_slot",
        "sequence_number",
        "serial",
        "slot_bytes",
        "slot_count",
        "ssrc",
        "timestamp",
        "view",
        "words16",
        "words32",
    )

    def __init__(self, slot_count: int = 8192, slot_bytes: int = MAX_DATAGRAM_BYTES) -> None:
        self.slot_count = slot_count
        self.slot_bytes = slot_bytes
        self.data = bytearray(slot_count * slot_bytes)
        self.view = memoryview(self.data)
        # The ring as 16- and 32-bit words: a header field of consecutive slots is one strided slice of them.
        # (Slots of a size that is not a multiple of 4 leave these None; runs are then rewritten per packet.)
        self.words16 = self.view.cast("H") if slot_bytes % 4 == 0 else None
        self.words32 = self.view.cast("I") if slot_bytes % 4 == 0 else None
        # Per-slot metadata of the packet as it arrived (the header bytes may be rewritten in place).
        self.length = [0] * slot_count
        self.ssrc = [0] * slot_count
        self.sequence_number = [0] * slot_count
        self.timestamp = [0] * slot_count
        self.keyframe = [False] * slot_count
        self.serial = [-1] * slot_count
        self.next_slot = 0
        self.next_serial = 0

    def reserve(self, count: int) -> int:
        """First index of ``count`` contiguous free-to-overwrite slots (wrapping to 0 if needed)."""
        if self.next_slot + count > self.slot_count:
            self.next_slot = 0
        first = self.next_slot
        self.next_slot += count
        if self.next_slot >= self.slot_count:
            self.next_slot = 0
        return first

    def offset(self, slot: int) -> int:
        return slot * self.slot_bytes

    def store(self, packet: bytes) -> int:
        """Copy one packet in (tests and the non-recvmmsg fallback use this); return its slot."""
        slot = self.reserve(1)
        start = slot * self.slot_bytes
        size = min(len(packet), self.slot_bytes)
        self.data[start : start + size] = packet[:size]
        self.length[slot] = size
        return slot

    def stamp(self, slot: int, ssrc: int, sequence_number: int, timestamp: int, keyframe: bool) -> int:
        """Record what arrived in ``slot``; returns the serial that keeps cache references honest."""
        serial = self.next_serial
        self.next_serial = serial + 1
        self.ssrc[slot] = ssrc
        self.sequence_number[slot] = sequence_number
        self.timestamp[slot] = timestamp
        self.keyframe[slot] = keyframe
        self.serial[slot] = serial
        return serial

    def stamp_batch(
        self,
        first: int,
        lengths: Sequence[int],
        ssrcs: Sequence[int],
        sequence_numbers: Sequence[int],
        timestamps: Sequence[int],
    ) -> int:
        """``stamp`` slots ``first ..`` of a received batch at once (keyframe: False until told otherwise).

        Every slot gets a new serial, dropped packets too: a cache reference to what the slot held before
        must stop matching as soon as its bytes are overwritten. Returns the first serial.
        """
        count = len(lengths)
        end = first + count
        serial = self.next_serial
        self.next_serial = serial + count
        self.length[first:end] = lengths
        self.ssrc[first:end] = ssrcs
        self.sequence_number[first:end] = sequence_numbers
        self.timestamp[first:end] = timestamps
        self.keyframe[first:end] = [False] * count
        self.serial[first:end] = range(serial, serial + count)
        return serial

    def holds(self, slot: int, serial: int) -> bool:
        return self.serial[slot] == serial

    def rewrite_headers(
        self,
        runs: Sequence[tuple[int, int, int]],
        lanes: HeaderLanes,
        sequence_offset: int,
        timestamp_offset: int,
        ssrc: int,
    ) -> None:
        """Write one output's sequence numbers, timestamps and SSRC into the headers of a run of packets,
        with a handful of C-level operations whatever the run's length (what ``Forwarder.rewrite_run`` does
        per packet). ``runs``: (first slot, first index in ``lanes``, count) of each stretch of consecutive
        slots; ``out = (in + offset)`` modulo 2¹⁶ / 2³².

        The additions happen in ``lanes`` (every field has room above it, so no carry reaches its
        neighbour); each field is then copied with one strided slice assignment per field and stretch (the
        ring's words hold network-order bytes, copied as they are)."""
        words16, words32 = self.words16, self.words32
        assert words16 is not None and words32 is not None  # callers check ring.words16 first
        added = (sequence_offset << 96 | timestamp_offset << 32 | ssrc) * lanes.ones
        fields = memoryview((lanes.value + added).to_bytes(16 * lanes.count, "big"))
        out_sequences = fields.cast("H")[1::8]  # octets 2-3 of each lane
        out_timestamps = fields.cast("I")[2::4]  # octets 8-11
        ssrcs = fields.cast("I")[3::4]  # octets 12-15
        step16, step32 = self.slot_bytes // 2, self.slot_bytes // 4
        for first_slot, index, length in runs:
            end_index = index + length
            start16, stop16 = first_slot * step16, (first_slot + length) * step16
            start32, stop32 = first_slot * step32, (first_slot + length) * step32
            words16[start16 + 1 : stop16 : step16] = out_sequences[index:end_index]  # octets 2-3
            words32[start32 + 1 : stop32 : step32] = out_timestamps[index:end_index]  # octets 4-7
            words32[start32 + 2 : stop32 : step32] = ssrcs[index:end_index]  # octets 8-11


class OutputHistory:
    """Outgoing sequence number → (slot, serial) of the packet sent with it, for NACK answers.

    Each position keeps the packet's *incoming* sequence number and the offset it was sent with (out = in +
    offset): the batch's own number objects and one offset object, so a run is remembered with slice
    assignments that allocate nothing (16 outputs × 48 packets: no new integers per output)."""

    __slots__ = ("in_sequences", "mask", "offsets", "serials", "slots")

    def __init__(self, size: int = 1024) -> None:
        if size & (size - 1):
            raise ValueError("history size must be a power of two")
        self.mask = size - 1
        self.slots = [0] * size
        self.serials = [-1] * size
        self.in_sequences = [-1] * size  # -1: nothing sent with this position yet
        self.offsets = [0] * size

    def remember(self, out_sequence: int, slot: int, serial: int) -> None:
        index = out_sequence & self.mask
        self.slots[index] = slot
        self.serials[index] = serial
        self.in_sequences[index] = out_sequence
        self.offsets[index] = 0

    def remember_run(
        self,
        sequence_offset: int,
        in_sequences: Sequence[int],
        slots: Sequence[int],
        serials: Sequence[int],
        in_order: bool,
        increasing: bool = False,
    ) -> None:
        """``remember`` a run sent with ``out = (in + sequence_offset) & 0xFFFF``: slices when consecutive,
        scattered writes driven from C when upstream loss left gaps (``increasing``), else per packet."""
        count = len(slots)
        first_out = (in_sequences[0] + sequence_offset) & 0xFFFF
        start = first_out & self.mask
        if in_order and count <= self.mask + 1:
            # Consecutive: slices, in two pieces where the run wraps around the end of the history.
            head = min(count, self.mask + 1 - start)
            end = start + head
            self.slots[start:end] = slots[:head]
            self.serials[start:end] = serials[:head]
            self.in_sequences[start:end] = in_sequences[:head]
            self.offsets[start:end] = [sequence_offset] * head
            if head < count:
                rest = count - head
                self.slots[:rest] = slots[head:]
                self.serials[:rest] = serials[head:]
                self.in_sequences[:rest] = in_sequences[head:]
                self.offsets[:rest] = [sequence_offset] * rest
            return
        span = in_sequences[-1] - in_sequences[0]
        if increasing and start + span <= self.mask:
            # Gaps but no wrap of the history: every position is start + (in - first in).
            positions = list(map((start - in_sequences[0]).__add__, in_sequences))
            deque(map(self.slots.__setitem__, positions, slots), maxlen=0)
            deque(map(self.serials.__setitem__, positions, serials), maxlen=0)
            deque(map(self.in_sequences.__setitem__, positions, in_sequences), maxlen=0)
            deque(map(self.offsets.__setitem__, positions, repeat(sequence_offset)), maxlen=0)
            return
        mask = self.mask
        history_slots, history_serials, history_in, history_offsets = (
            self.slots, self.serials, self.in_sequences, self.offsets
        )
        for in_sequence, slot, serial in zip(in_sequences, slots, serials, strict=True):
            index = (in_sequence + sequence_offset) & mask
            history_slots[index] = slot
            history_serials[index] = serial
            history_in[index] = in_sequence
            history_offsets[index] = sequence_offset

    def find(self, out_sequence: int, ring: PacketRing) -> int:
        """Slot still holding the packet sent as ``out_sequence``, or -1 if it fell out of the cache."""
        index = out_sequence & self.mask
        in_sequence = self.in_sequences[index]
        if in_sequence < 0 or (in_sequence + self.offsets[index]) & 0xFFFF != out_sequence:
            return -1
        slot = self.slots[index]
        return slot if ring.holds(slot, self.serials[index]) else -1
