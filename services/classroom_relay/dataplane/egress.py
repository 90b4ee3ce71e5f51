"""Sending: each output gets the packets of the layer it follows, rewritten, paced and sent.

ingest.py hands over one ``LayerBatch`` per layer of a received batch. The usual case is a *run*: the
output follows that layer, has tokens for the whole run and nothing queued, so the forwarder rewrites all
headers in place in the ring and the run leaves with one sendmmsg (or one UDP GSO send per equal-size
chunk) straight from the ring (``RingGather``). Everything else goes packet by packet
(``_forward_packetwise``): a layer switch inside the batch, a pacer that is short of tokens (the packet
waits in the output's ``PacedQueue``, sent later by ``drain_queues``), or no sendmmsg.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Sequence

from . import rtp
from .allocator import FIT_FRACTION, NO_TARGET
from .buffer import MIN_VECTOR_RUN, PacketRing
from .forwarder import NO_LAYER
from .streams import LayerBatch, Output, Streams, Track
from .udpbatch import GsoStage, RingGather, gso_chunks


class Egress:
    def __init__(
        self, ring: PacketRing, gather: RingGather | None, gso_enabled: bool, streams: Streams, drops: rtp.DropCounters
    ) -> None:
        self.ring = ring
        self.gather = gather  # None without sendmmsg: outputs then send packet by packet
        self.gso_enabled = gso_enabled
        self.all_outputs = streams.all_outputs
        self.outputs_with_queue = streams.outputs_with_queue
        self.drops = drops
        # Called before an output's first packet (feedback.py sends a sender report first: receivers such as
        # ffmpeg fix their RTP-to-clock mapping on what arrives first).
        self.before_first_packet = lambda output, now: None

    def prepare_output(self, output: Output) -> None:
        """Without a connected twin (streams.py), the output's own sendmmsg headers: every message names it.
        With one, the shared headers (no name) serve every output."""
        if self.gather is not None and not output.connected:
            output.messages, output.messages_base = self.gather.messages_to(output.sockaddr)
            output.sockaddr_address = ctypes.addressof(ctypes.c_char.from_buffer(output.sockaddr))

    def begin_batch(self, now: float) -> None:
        """Nothing per output: each bucket is refilled when its output sends (``_forward_run``,
        ``_forward_packetwise``, ``drain_queues``) or answers feedback (engine.py), so a batch costs nothing
        for the outputs of other tracks (at 1→200 with audio and video: 400 outputs)."""

    def end_batch(self) -> None:
        """Send what the GSO stages of the packet-by-packet path still hold."""
        if self.gso_enabled:
            for output in self.all_outputs:
                stage = output.gso
                if stage is not None and stage.segments:
                    self.flush_gso(output)

    def load_gather(self, batches: list[LayerBatch]) -> None:
        """Point the shared iovecs at this batch's packets, layer after layer; plan the GSO chunks."""
        gather = self.gather
        assert gather is not None  # ingest.py calls this only with sendmmsg
        if len(batches) == 1:
            gather.load(batches[0].slots, batches[0].sizes)
        else:
            gather.load(
                [slot for batch in batches for slot in batch.slots], [size for batch in batches for size in batch.sizes]
            )
        start = 0
        for batch in batches:
            batch.gather_start = start
            if self.gso_enabled:
                batch.gso_chunks = gso_chunks(batch.sizes, start)
            start += len(batch.slots)

    def forward_batches(self, batches: list[LayerBatch], now: float) -> None:
        """Hand each output the packets of the layer it follows (or walk them one by one at a switch)."""
        by_track: dict[Track, dict[int, LayerBatch]] = {}
        for batch in batches:
            by_track.setdefault(batch.layer.track, {})[batch.layer.ssrc] = batch
        for track, by_ssrc in by_track.items():
            ambiguous = len(by_ssrc) != sum(batch.layer.track is track for batch in batches)
            for output in track.outputs:
                forwarder = output.forwarder
                target = output.target_ssrc
                if target == NO_TARGET and forwarder.layer_ssrc == NO_LAYER:
                    target = output.target_ssrc = self._first_target(output, track, by_ssrc)
                switching = target != forwarder.layer_ssrc and target in by_ssrc and (
                    track.is_audio or by_ssrc[target].keyframe_timestamps
                )
                if ambiguous or switching:
                    # A layer switch lands inside this batch: keep the exact arrival order across layers.
                    arrival_order = sorted(slot for batch in by_ssrc.values() for slot in batch.slots)
                    self._forward_packetwise(output, arrival_order, now)
                    continue
                followed = by_ssrc.get(forwarder.layer_ssrc)
                if followed is not None:
                    self._forward_run(output, followed, now)

    @staticmethod
    def _first_target(output: Output, track: Track, by_ssrc: dict[int, LayerBatch]) -> int:
        """Before the allocator has measured anything, so the encoder's first keyframe reaches the receiver.

        Audio starts at once. Video starts at once on a layer whose batch holds a keyframe start, unless the
        control plane declared several layers (``layers_bps``) and the output's budget cannot carry the
        highest: then which SSRC is which layer is not known yet, and starting on the wrong one would
        overrun the budget until the next keyframe; the allocator decides after its first measurement
        (~0.2 s) and asks the encoder for a keyframe of the chosen layer.
        """
        if track.is_audio:
            return next(iter(by_ssrc))
        declared = track.spec.declared_layer_rates
        if len(declared) > 1 and output.budget * FIT_FRACTION < declared[-1]:
            return NO_TARGET
        for ssrc, batch in by_ssrc.items():
            # (A layer's very first batch: ingest.py counts a batch's packets only after it was forwarded.)
            if batch.keyframe_timestamps or (len(track.layers) == 1 and batch.layer.packets_in == 0):
                return ssrc
        return NO_TARGET

    def _forward_run(self, output: Output, batch: LayerBatch, now: float) -> None:
        """Send one output its layer's packets of this batch: one rewrite loop, one send call."""
        bucket = output.bucket
        bucket.refill(now)
        if output.queue.entries or bucket.tokens < batch.total_bytes or self.gather is None:
            self._forward_packetwise(output, batch.slots, now)  # the pacer decides packet by packet
            return
        bucket.tokens -= batch.total_bytes
        if not output.packets_out:
            self.before_first_packet(output, now)
        for timestamp in batch.keyframe_timestamps:
            if timestamp != output.last_keyframe_timestamp:
                output.last_keyframe_timestamp = timestamp
                output.keyframes_out += 1
                if output.first_keyframe_time < 0:
                    output.first_keyframe_time = now
        forwarder = output.forwarder
        ring = self.ring
        if len(batch.slots) >= MIN_VECTOR_RUN and ring.words16 is not None:
            ring.rewrite_headers(
                batch.slot_runs, batch.lanes, forwarder.sequence_offset, forwarder.timestamp_offset, forwarder.out_ssrc
            )
            forwarder.advance_run(batch.sequences, batch.timestamps, batch.increasing, now)
        else:
            forwarder.rewrite_run(
                ring.data, batch.header_offsets, batch.sequences, batch.timestamps, batch.increasing, now
            )
        output.history.remember_run(
            forwarder.sequence_offset,
            batch.sequences,
            batch.slot_list,
            batch.serial_list,
            batch.in_order,
            batch.increasing,
        )
        self._send_gathered(output, batch)
        output.bytes_out += batch.total_bytes
        output.packets_out += len(batch.slots)
        output.last_media_time = now

    def _send_gathered(self, output: Output, batch: LayerBatch) -> None:
        gather = self.gather
        assert gather is not None  # _forward_run sends runs only with sendmmsg
        fd = output.send_fd
        if self.gso_enabled:
            for start, count, segment_bytes in batch.gso_chunks:
                if not gather.send_segmented(fd, start, count, segment_bytes, output.sockaddr_address):
                    self._count_send_errno(output, gather.last_errno, count)
            return
        start = batch.gather_start
        end = start + len(batch.slots)
        while start < end:
            sent = gather.send_each(fd, start, end - start, output.messages_base)
            if sent <= 0:  # this datagram failed, as a send() of it would have: count it, go on with the rest
                self._count_send_errno(output, gather.last_errno, 1)
                sent = 1
            start += sent

    def _forward_packetwise(self, output: Output, slots: Sequence[int], now: float) -> None:
        """The general path, packet by packet in arrival order: layer switches, pacing queue, tokens short."""
        ring = self.ring
        ring_ssrc, ring_keyframe = ring.ssrc, ring.keyframe
        ring_sequence, ring_timestamp = ring.sequence_number, ring.timestamp
        forwarder = output.forwarder
        output.bucket.refill(now)
        for slot in slots:
            ssrc = ring_ssrc[slot]
            keyframe = ring_keyframe[slot]
            sequence_number, timestamp = ring_sequence[slot], ring_timestamp[slot]
            if forwarder.layer_ssrc != ssrc:
                if output.target_ssrc != ssrc or not (keyframe or output.track.is_audio):
                    continue
                output.queue.clear()  # packets of the old layer would only confuse the decoder now
                self.outputs_with_queue.discard(output)
                layer = output.track.layers.get(ssrc)
                forwarder.switch_to(ssrc, sequence_number, timestamp, now, layer.frame_ticks if layer else 0)
            self._forward(
                output,
                slot,
                ring.serial[slot],
                slot * ring.slot_bytes,
                ring.length[slot],
                sequence_number,
                timestamp,
                keyframe,
                now,
            )

    def _forward(
        self,
        output: Output,
        slot: int,
        serial: int,
        offset: int,
        size: int,
        sequence_number: int,
        timestamp: int,
        keyframe: bool,
        now: float,
    ) -> None:
        forwarder = output.forwarder
        if not output.packets_out:
            self.before_first_packet(output, now)
        if keyframe and timestamp != output.last_keyframe_timestamp:
            output.last_keyframe_timestamp = timestamp
            output.keyframes_out += 1
            if output.first_keyframe_time < 0:
                output.first_keyframe_time = now
        if output.queue.entries or not output.bucket.try_take(size):
            out_sequence = forwarder.out_sequence(sequence_number)
            out_timestamp = forwarder.out_timestamp(timestamp)
            forwarder.last_out_sequence = out_sequence
            forwarder.last_out_timestamp = out_timestamp
            forwarder.last_out_time = now
            if output.queue.offer(slot, serial, out_sequence, out_timestamp, size):
                output.history.remember(out_sequence, slot, serial)
                self.outputs_with_queue.add(output)
            else:
                output.pacer_drops += 1
                self.drops.counts[rtp.PACER_OVERFLOW] += 1
            return
        stage = output.gso
        if stage is None and self.gso_enabled:
            stage = output.gso = GsoStage()
        if stage is None:
            out_sequence = forwarder.rewrite(self.ring.data, offset, sequence_number, timestamp, now)
            output.history.remember(out_sequence, slot, serial)
            self.send(output, self.ring.view[offset : offset + size])
        else:
            if stage.must_flush_before(size):
                self.flush_gso(output)
            position = stage.append(self.ring.view, offset, size)
            out_sequence = forwarder.rewrite(stage.buffer, position, sequence_number, timestamp, now)
            output.history.remember(out_sequence, slot, serial)
            if stage.full():
                self.flush_gso(output)
        output.bytes_out += size
        output.packets_out += 1
        output.last_media_time = now

    def send(self, output: Output, packet: memoryview | bytes) -> None:
        try:
            if output.connected:
                output.send_sock.send(packet)
            else:
                output.sock.sendto(packet, output.destination)
        except OSError as error:
            self._count_send_error(output, error, 1)

    def _count_send_error(self, output: Output, error: OSError, packets: int) -> None:
        output.send_errors += 1
        reason = rtp.DESTINATION_UNREACHABLE if isinstance(error, ConnectionRefusedError) else rtp.SEND_FAILED
        self.drops.counts[reason] += packets

    def _count_send_errno(self, output: Output, number: int, packets: int) -> None:
        output.send_errors += 1
        reason = rtp.DESTINATION_UNREACHABLE if number == errno.ECONNREFUSED else rtp.SEND_FAILED
        self.drops.counts[reason] += packets

    def flush_gso(self, output: Output) -> None:
        stage = output.gso
        assert stage is not None  # outputs have a GSO stage when GSO is on
        segments = stage.segments
        try:
            stage.flush(output.send_sock, None if output.connected else output.destination)
        except OSError as error:
            self._count_send_error(output, error, segments)

    def drain_queues(self, now: float) -> None:
        ring = self.ring
        for output in list(self.outputs_with_queue):
            queue = output.queue
            output.bucket.refill(now)
            while queue.entries and output.bucket.try_take(queue.peek_size()):
                slot, serial, out_sequence, out_timestamp, size = queue.pop()
                if not ring.holds(slot, serial):
                    output.pacer_drops += 1
                    self.drops.counts[rtp.PACER_OVERFLOW] += 1
                    continue
                offset = slot * ring.slot_bytes
                output.forwarder.rewrite_copy(ring.data, offset, out_sequence, out_timestamp)
                self.send(output, ring.view[offset : offset + size])
                output.bytes_out += size
                output.packets_out += 1
                output.last_media_time = now
            if not queue.entries:
                self.outputs_with_queue.discard(output)
