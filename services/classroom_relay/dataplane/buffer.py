"""The packet ring: where datagrams are received, and the retransmission cache at the same time.

Datagrams are received straight into preallocated slots of one bytearray, so the cache costs no
copy. Slots are reused oldest-first; every packet gets a serial number, and a cached reference
(slot, serial) is only valid while the slot still holds that serial.

Each output keeps an ``OutputHistory``: a fixed-size ring keyed by the *outgoing* sequence number,
so a NACK from a receiver (which only knows rewritten sequence numbers) finds the original packet.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

from .rtp import MAX_DATAGRAM_BYTES


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
    )

    def __init__(self, slot_count: int = 8192, slot_bytes: int = MAX_DATAGRAM_BYTES) -> None:
        self.slot_count = slot_count
        self.slot_bytes = slot_bytes
        self.data = bytearray(slot_count * slot_bytes)
        self.view = memoryview(self.data)
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
        self.keyframe[first:end] = repeat(False, count)
        self.serial[first:end] = range(serial, serial + count)
        return serial

    def holds(self, slot: int, serial: int) -> bool:
        return self.serial[slot] == serial


class OutputHistory:
    """Outgoing sequence number → (slot, serial) of the packet sent with it, for NACK answers."""

    __slots__ = ("mask", "sent_sequence", "serials", "slots")

    def __init__(self, size: int = 1024) -> None:
        if size & (size - 1):
            raise ValueError("history size must be a power of two")
        self.mask = size - 1
        self.slots = [0] * size
        self.serials = [-1] * size
        self.sent_sequence = [-1] * size

    def remember(self, out_sequence: int, slot: int, serial: int) -> None:
        index = out_sequence & self.mask
        self.slots[index] = slot
        self.serials[index] = serial
        self.sent_sequence[index] = out_sequence

    def remember_run(
        self,
        sequence_offset: int,
        in_sequences: Sequence[int],
        slots: Sequence[int],
        serials: Sequence[int],
        in_order: bool,
    ) -> None:
        """``remember`` a run sent with ``out = (in + sequence_offset) & 0xFFFF``; slices when consecutive."""
        count = len(slots)
        first_out = (in_sequences[0] + sequence_offset) & 0xFFFF
        start = first_out & self.mask
        if in_order and start + count <= self.mask + 1 and first_out + count <= 0x10000:
            end = start + count
            self.slots[start:end] = slots
            self.serials[start:end] = serials
            self.sent_sequence[start:end] = range(first_out, first_out + count)
            return
        mask, history_slots, history_serials, sent = self.mask, self.slots, self.serials, self.sent_sequence
        for in_sequence, slot, serial in zip(in_sequences, slots, serials, strict=True):
            out_sequence = (in_sequence + sequence_offset) & 0xFFFF
            index = out_sequence & mask
            history_slots[index] = slot
            history_serials[index] = serial
            sent[index] = out_sequence

    def find(self, out_sequence: int, ring: PacketRing) -> int:
        """Slot still holding the packet sent as ``out_sequence``, or -1 if it fell out of the cache."""
        index = out_sequence & self.mask
        if self.sent_sequence[index] != out_sequence:
            return -1
        slot = self.slots[index]
        return slot if ring.holds(slot, self.serials[index]) else -1
