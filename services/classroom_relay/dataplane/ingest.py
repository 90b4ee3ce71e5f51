"""Receiving: one epoll wake-up's batches of datagrams from the media socket, classified per layer.

``RingReceiver`` (udpbatch.py) reads up to ``batch`` datagrams with one recvmmsg straight into the packet
ring (buffer.py). Each packet is validated (rtp.py), admitted (topology.py: its sender's address and SSRC
must be pinned by a join token) and checked for a keyframe start (h264.py); RTCP and hellos that arrive
on the media port go to feedback.py and topology.py. The accepted packets are grouped into one
``LayerBatch`` per layer, egress.py sends them on, and then each layer's receive statistics are updated
once per batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from . import rtp
from .buffer import PacketRing
from .egress import Egress
from .feedback import Feedback
from .h264 import is_keyframe_start
from .streams import Layer, LayerBatch, Streams
from .topology import Topology
from .udpbatch import MSG_TRUNC, RingReceiver

MAX_BATCHES_PER_WAKE = 8
# First payload octets of H.264 non-IDR slices (NAL type 1, any NRI/F bits): never the start of a keyframe.
_NON_IDR_SLICE_OCTETS = frozenset(octet for octet in range(256) if octet & 0x1F == 1)


class Ingest:
    def __init__(
        self,
        ring: PacketRing,
        receiver: RingReceiver,
        streams: Streams,
        drops: rtp.DropCounters,
        topology: Topology,
        feedback: Feedback,
        egress: Egress,
    ) -> None:
        self.ring = ring
        self.media_receiver = receiver
        self.layers = streams.layers
        self.drops = drops
        self.header = rtp.RtpHeader()
        self.topology = topology
        self.feedback = feedback
        self.egress = egress

    def drain_media(self, now: float) -> None:
        receiver = self.media_receiver
        for _ in range(MAX_BATCHES_PER_WAKE):
            first, count = receiver.receive()
            if count == 0:
                return
            self.egress.begin_batch(now)
            self._process_batch(first, count, now)
            self.egress.end_batch()
            if count < receiver.batch:
                return

    def _process_batch(self, first: int, count: int, now: float) -> None:
        """Validate, admit and forward one received batch (slots ``first .. first+count-1``).

        Work is done per batch wherever the packets allow it: the headers, lengths and sources of the
        whole batch are read with one ``struct`` call each, the ring is stamped with slice assignments,
        and each output sends the packets of its layer with one sendmmsg / GSO send. Only validation,
        admission and keyframe detection look at every packet in Python.
        """
        ring = self.ring
        lengths, flags, keys = self.media_receiver.batch_metadata(first, count)
        fields = rtp.batch_header_struct(count, ring.slot_bytes).unpack_from(ring.data, first * ring.slot_bytes)
        sequences, timestamps = fields[2 :: rtp.BATCH_FIELDS], fields[3 :: rtp.BATCH_FIELDS]
        first_serial = ring.stamp_batch(first, lengths, fields[4 :: rtp.BATCH_FIELDS], sequences, timestamps)
        accepted, keyframes = self._classify_single_source(first, lengths, flags, keys, fields) or self._classify(
            first, lengths, flags, keys, fields, now
        )
        if not accepted:
            return
        batches = [
            self._layer_batch(layer, indices, keyframes, first, first_serial, lengths, sequences, timestamps)
            for layer, indices in accepted.items()
        ]
        if self.egress.gather is not None:
            self.egress.load_gather(batches)
        self.egress.forward_batches(batches, now)
        # Counted after sending: the statistics are for the timers and RTCP, the packets should not wait.
        for batch in batches:
            self._account_layer(batch, now)

    def _classify_single_source(
        self,
        first: int,
        lengths: Sequence[int],
        flags: Sequence[int],
        keys: Sequence[int],
        fields: Sequence[int],
    ) -> tuple[Mapping[Layer, Sequence[int]], list[tuple[Layer, int]]] | None:
        """``_classify`` for the usual batch, checked column by column at C speed: every packet a plain RTP
        packet (fast-path header, not truncated) of one known layer from its pinned sender. None when any
        packet needs the per-packet path."""
        step = rtp.BATCH_FIELDS
        count = len(lengths)
        ssrcs = fields[4::step]
        layer = self.layers.get(ssrcs[0])
        if layer is None or layer.sender_key != keys[0]:
            return None
        if (
            ssrcs.count(ssrcs[0]) != count
            or keys.count(keys[0]) != count
            or flags.count(0) != count
            or min(lengths) <= 12
            or fields[0::step].count(0x80) != count
            or max(fields[1::step]) >= 192
        ):
            return None
        keyframes: list[tuple[Layer, int]] = []
        payload_octets = fields[5::step]
        if not _NON_IDR_SLICE_OCTETS.issuperset(payload_octets):  # some packet may start a keyframe
            data, slot_bytes, ring_keyframe = self.ring.data, self.ring.slot_bytes, self.ring.keyframe
            for index, octet in enumerate(payload_octets):
                offset = (first + index) * slot_bytes
                if octet & 0x1F != 1 and is_keyframe_start(data, offset + 12, lengths[index] - 12):
                    ring_keyframe[first + index] = True
                    keyframes.append((layer, index))
        return {layer: range(count)}, keyframes

    def _classify(
        self,
        first: int,
        lengths: Sequence[int],
        flags: Sequence[int],
        keys: Sequence[int],
        fields: Sequence[int],
        now: float,
    ) -> tuple[Mapping[Layer, Sequence[int]], list[tuple[Layer, int]]]:
        """Validate and admit every packet: per layer, the batch indices of its packets in arrival order,
        and the (layer, index) of keyframe packets (also marked in the ring)."""
        data = self.ring.data
        slot_bytes = self.ring.slot_bytes
        ring_keyframe = self.ring.keyframe
        layers_get = self.layers.get
        accepted: dict[Layer, list[int]] = {}
        keyframes: list[tuple[Layer, int]] = []
        current_layer: Layer | None = None
        current_indices: list[int] = []
        offset = (first - 1) * slot_bytes
        step = rtp.BATCH_FIELDS
        for index, (size, flag, key, first_octet, second_octet, ssrc, payload_octet) in enumerate(
            zip(lengths, flags, keys, fields[0::step], fields[1::step], fields[4::step], fields[5::step], strict=True)
        ):
            offset += slot_bytes
            if size > 12 and first_octet == 0x80 and second_octet < 192 and not flag:
                # Fast path: version 2, no padding, extension or CSRCs, not RTCP, not truncated.
                layer = layers_get(ssrc)
                if layer is None or layer.sender_key != key:
                    layer = self.topology.admit_layer(key, ssrc)
                    if layer is None:
                        continue
                # Non-IDR slices (1) are the bulk of the stream; only other NAL types need a closer look.
                if payload_octet & 0x1F != 1 and is_keyframe_start(data, offset + 12, size - 12):
                    ring_keyframe[first + index] = True
                    keyframes.append((layer, index))
            else:
                layer = self._classify_unusual(first + index, offset, size, flag, key, now)
                if layer is None:
                    continue
                if ring_keyframe[first + index]:
                    keyframes.append((layer, index))
            if layer is not current_layer:
                current_layer = layer
                found = accepted.get(layer)
                if found is None:
                    found = accepted[layer] = []
                current_indices = found
            current_indices.append(index)
        return accepted, keyframes

    def _classify_unusual(self, slot: int, offset: int, size: int, flag: int, key: int, now: float) -> Layer | None:
        """Everything off the fast path: truncated, RTCP, a hello, RTP with CSRCs/extension/padding, junk."""
        data = self.ring.data
        if flag & MSG_TRUNC:
            self.drops.counts[rtp.TOO_LARGE] += 1
            return None
        if size >= 2 and 192 <= data[offset + 1] <= 223:
            self.feedback.handle_rtcp(data, offset, size, key, now, None)
            return None
        header = self.header
        reason = rtp.parse_rtp(data, offset, size, header)
        if reason:
            if reason == rtp.BAD_VERSION and self.topology.handle_hello(data, offset, size, key):
                return None
            self.drops.counts[reason] += 1
            return None
        layer = self.layers.get(header.ssrc)
        if layer is None or layer.sender_key != key:
            layer = self.topology.admit_layer(key, header.ssrc)
            if layer is None:
                return None
        payload_offset = header.payload_offset
        if data[payload_offset] & 0x1F != 1 and is_keyframe_start(data, payload_offset, header.payload_length):
            self.ring.keyframe[slot] = True
        return layer

    def _layer_batch(
        self,
        layer: Layer,
        indices: Sequence[int],
        keyframes: list[tuple[Layer, int]],
        first: int,
        first_serial: int,
        lengths: Sequence[int],
        sequences: Sequence[int],
        timestamps: Sequence[int],
    ) -> LayerBatch:
        count = len(indices)
        slot_bytes = self.ring.slot_bytes
        if count == len(lengths):  # the whole batch is this layer's (the common case): nothing to pick
            slots: Sequence[int] = range(first, first + count)
            serials: Sequence[int] = range(first_serial, first_serial + count)
            header_offsets: Sequence[int] = range(first * slot_bytes + 2, (first + count) * slot_bytes, slot_bytes)
            sizes, layer_sequences, layer_timestamps = lengths, sequences, timestamps
        else:
            slots = [first + index for index in indices]
            serials = [first_serial + index for index in indices]
            header_offsets = [slot * slot_bytes + 2 for slot in slots]
            sizes = [lengths[index] for index in indices]
            layer_sequences = [sequences[index] for index in indices]
            layer_timestamps = [timestamps[index] for index in indices]
        # Audio has no keyframes: whatever its payload happens to look like, it is never counted as one.
        keyframe_timestamps = (
            [] if layer.track.is_audio else [timestamps[index] for owner, index in keyframes if owner is layer]
        )
        return LayerBatch(
            layer, slots, serials, header_offsets, sizes, layer_sequences, layer_timestamps, keyframe_timestamps
        )

    @staticmethod
    def _account_layer(batch: LayerBatch, now: float) -> None:
        """Per-layer receive statistics, once per batch."""
        layer = batch.layer
        layer.bytes_in += batch.total_bytes
        layer.packets_in += len(batch.slots)
        layer.last_packet_time = now
        layer.reception.on_batch(batch.sequences, batch.timestamps, now)
        timestamps = batch.timestamps
        previous = layer.last_timestamp
        if previous != timestamps[-1] or timestamps[0] != timestamps[-1]:
            _measure_frame_step(layer, timestamps, previous)
        layer.last_timestamp = timestamps[-1]
        for timestamp in batch.keyframe_timestamps:
            if timestamp != layer.last_keyframe_timestamp:
                layer.last_keyframe_timestamp = timestamp
                layer.keyframes_in += 1


def _measure_frame_step(layer: Layer, timestamps: Sequence[int], previous: int) -> None:
    """The smallest forward step between distinct timestamps (one frame, or one audio packet)."""
    steps = sorted(set(timestamps))
    if previous >= 0:
        steps.insert(0, previous)
    best = 0
    for earlier, later in itertools.pairwise(steps):
        step = (later - earlier) & 0xFFFFFFFF
        if 0 < step < layer.track.clock_rate and (best == 0 or step < best):
            best = step
    if best:
        layer.frame_ticks = best
