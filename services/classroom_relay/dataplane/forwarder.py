"""Per-output SSRC, sequence number and timestamp rewriting.

Every output (a branch receiving the master, or the master receiving a branch's camera) has its own
outgoing SSRC. Whichever simulcast layer it follows, the receiver sees one stream: sequence numbers
continue by one across a switch, timestamps continue one frame interval after the last packet sent (the
new layer's measured frame step; wall-clock time only after a pause longer than a second), and gaps that
were already in the source (loss) stay visible so the receiver can NACK them.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence

_SEQUENCE_TIMESTAMP_SSRC = struct.Struct("!HII")  # bytes 2..12 of the RTP header

NO_LAYER = -1


def _random_u32() -> int:
    return int.from_bytes(os.urandom(4), "big")


class Forwarder:
    __slots__ = (
        "clock_rate",
        "last_out_sequence",
        "last_out_time",
        "last_out_timestamp",
        "layer_ssrc",
        "out_ssrc",
        "sequence_offset",
        "source_ticks",
        "switches",
        "timestamp_offset",
    )

    def __init__(self, out_ssrc: int | None = None, clock_rate: int = 90_000) -> None:
        self.out_ssrc = out_ssrc if out_ssrc is not None else _random_u32()
        self.clock_rate = clock_rate
        self.layer_ssrc = NO_LAYER  # which incoming SSRC is being forwarded; none until a keyframe
        self.sequence_offset = 0
        self.timestamp_offset = 0
        # Random starting points (RFC 3550 §5.1) so the outgoing stream reveals nothing of the source.
        self.last_out_sequence = _random_u32() & 0xFFFF
        self.last_out_timestamp = _random_u32()
        self.last_out_time = -1.0
        self.switches = 0
        # (layer SSRC, its RTP timestamp) -> that instant on the sender's report clock in ticks, None without
        # a sender report for the layer (streams.py's Track.source_ticks).
        self.source_ticks: Callable[[int, int], float | None] | None = None

    def switch_to(
        self, layer_ssrc: int, in_sequence: int, in_timestamp: int, now: float, frame_ticks: int = 0
    ) -> None:
        """Start forwarding ``layer_ssrc`` at this (keyframe) packet, continuing the outgoing stream."""
        next_sequence = (self.last_out_sequence + 1) & 0xFFFF
        if self.last_out_time < 0:
            next_timestamp = self.last_out_timestamp
        else:
            elapsed_ticks = int((now - self.last_out_time) * self.clock_rate)
            # The new layer's next frame follows the last frame sent: one frame step, not the wall-clock
            # time the switch happened to take (that made steps of 827, 1416, 1 ticks instead of 3000).
            step = frame_ticks if frame_ticks > 0 and elapsed_ticks < self.clock_rate else max(1, elapsed_ticks)
            reported = self._reported_step(layer_ssrc, in_timestamp, frame_ticks)
            if reported is not None and elapsed_ticks < self.clock_rate:
                step = reported
            next_timestamp = (self.last_out_timestamp + step) & 0xFFFFFFFF
        self.sequence_offset = (next_sequence - in_sequence) & 0xFFFF
        self.timestamp_offset = (next_timestamp - in_timestamp) & 0xFFFFFFFF
        self.layer_ssrc = layer_ssrc
        self.switches += 1

    def _reported_step(self, layer_ssrc: int, in_timestamp: int, frame_ticks: int) -> int | None:
        """The step the sender's reports put between the last frame sent and the new layer's keyframe.

        Our sender reports map the output's timestamps through the followed layer's report (feedback.py), so
        after a switch the receiver's clock for this stream moves by (reported step - our step). A switch
        down usually lands on the low layer's keyframe of the very instant whose high-layer frame was just
        sent (the encoder writes its outputs in order): one frame step made the picture 40 ms late until the
        next report pulled it back (measured: the beep 34 ms before its flash for the first low-layer second,
        and a non-monotonic dts at ffmpeg; test_lip_sync.py).
        Whole frames are kept whole; the same instant becomes one tick, so timestamps still increase.
        """
        if self.source_ticks is None or self.layer_ssrc == NO_LAYER:
            return None
        last_in_timestamp = (self.last_out_timestamp - self.timestamp_offset) & 0xFFFFFFFF
        before = self.source_ticks(self.layer_ssrc, last_in_timestamp)
        after = self.source_ticks(layer_ssrc, in_timestamp)
        if before is None or after is None:
            return None
        ticks = after - before
        if not -frame_ticks / 2 < ticks < self.clock_rate:
            return None  # not one sender's clock, or a pause: the frame step (or wall clock) it is
        frames = round(ticks / frame_ticks) if frame_ticks > 0 else 0
        if frames >= 1:
            return frames * frame_ticks
        return max(1, round(ticks)) if frame_ticks <= 0 else 1

    def out_sequence(self, in_sequence: int) -> int:
        return (in_sequence + self.sequence_offset) & 0xFFFF

    def out_timestamp(self, in_timestamp: int) -> int:
        return (in_timestamp + self.timestamp_offset) & 0xFFFFFFFF

    def rewrite(
        self, buffer: bytearray | memoryview, offset: int, in_sequence: int, in_timestamp: int, now: float
    ) -> int:
        """Rewrite the header at ``offset`` in place for this output; return the outgoing sequence."""
        out_sequence = (in_sequence + self.sequence_offset) & 0xFFFF
        out_timestamp = (in_timestamp + self.timestamp_offset) & 0xFFFFFFFF
        _SEQUENCE_TIMESTAMP_SSRC.pack_into(buffer, offset + 2, out_sequence, out_timestamp, self.out_ssrc)
        # Only move "last" forward: a reordered older packet must not pull the switch point back.
        if ((out_sequence - self.last_out_sequence) & 0xFFFF) < 0x8000:
            self.last_out_sequence = out_sequence
            self.last_out_timestamp = out_timestamp
        self.last_out_time = now
        return out_sequence

    def rewrite_copy(self, buffer: bytearray | memoryview, offset: int, out_sequence: int, out_timestamp: int) -> None:
        """Write already-computed outgoing values (used for retransmissions and paced packets)."""
        _SEQUENCE_TIMESTAMP_SSRC.pack_into(buffer, offset + 2, out_sequence, out_timestamp, self.out_ssrc)

    def rewrite_run(
        self,
        buffer: bytearray,
        header_offsets: Sequence[int],
        in_sequences: Sequence[int],
        in_timestamps: Sequence[int],
        in_order: bool,
        now: float,
    ) -> None:
        """``rewrite`` for a run of packets of the followed layer (``header_offsets``: RTP header + 2).

        ``in_order``: each sequence number is above the previous one (within half the number space), so the
        "last" state only depends on the first and last packet instead of a comparison per packet.
        """
        sequence_offset, timestamp_offset = self.sequence_offset, self.timestamp_offset
        out_ssrc = self.out_ssrc
        pack = _SEQUENCE_TIMESTAMP_SSRC.pack_into
        for header_offset, in_sequence, in_timestamp in zip(header_offsets, in_sequences, in_timestamps, strict=True):
            pack(
                buffer,
                header_offset,
                (in_sequence + sequence_offset) & 0xFFFF,
                (in_timestamp + timestamp_offset) & 0xFFFFFFFF,
                out_ssrc,
            )
        self.advance_run(in_sequences, in_timestamps, in_order, now)

    def advance_run(
        self, in_sequences: Sequence[int], in_timestamps: Sequence[int], in_order: bool, now: float
    ) -> None:
        """The "last sent" state after a run whose headers were written (``rewrite_run``, or buffer.py's
        ``PacketRing.rewrite_headers`` for the whole run at once)."""
        sequence_offset, timestamp_offset = self.sequence_offset, self.timestamp_offset
        last_sequence = self.last_out_sequence
        if in_order:
            # Increasing numbers: if any of them is ahead of "last", all after it are, so the last one wins.
            first_out = (in_sequences[0] + sequence_offset) & 0xFFFF
            final_out = (in_sequences[-1] + sequence_offset) & 0xFFFF
            if ((first_out - last_sequence) & 0xFFFF) < 0x8000 or ((final_out - last_sequence) & 0xFFFF) < 0x8000:
                self.last_out_sequence = final_out
                self.last_out_timestamp = (in_timestamps[-1] + timestamp_offset) & 0xFFFFFFFF
        else:
            last_timestamp = self.last_out_timestamp
            for in_sequence, in_timestamp in zip(in_sequences, in_timestamps, strict=True):
                out_sequence = (in_sequence + sequence_offset) & 0xFFFF
                if ((out_sequence - last_sequence) & 0xFFFF) < 0x8000:
                    last_sequence = out_sequence
                    last_timestamp = (in_timestamp + timestamp_offset) & 0xFFFFFFFF
            self.last_out_sequence, self.last_out_timestamp = last_sequence, last_timestamp
        self.last_out_time = now
