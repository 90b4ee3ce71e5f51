"""The forwarding loop.

One thread, blocking on epoll, then working per batch: receive up to 64 datagrams with one
recvmmsg straight into the packet ring, validate and admit each, and hand it to every output that
follows its layer — rewriting the header in place (or into a GSO staging buffer) and sending on the
output's own connect()ed socket. Timers (rates, layer choice, reports, freezes) run every 100 ms.

The control channel and the metrics exporter run in other threads; they take ``Engine.lock``, which
the loop holds only while it works on a batch (never while it waits).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from . import rtp
from .admission import AdmissionTable, PinnedSender, address_key, key_address, parse_hello
from .allocator import NO_TARGET, RateMeter, choose_layer, layer_rank
from .buffer import OutputHistory, PacketRing
from .forwarder import NO_LAYER, Forwarder
from .h264 import is_keyframe_start
from .pacer import PacedQueue, TokenBucket
from .rtcp import (
    KeyframeRequest,
    KeyframeRequestThrottle,
    Nack,
    ReceptionStats,
    ReportBlock,
    SenderReport,
    build_pli,
    build_receiver_report,
    build_sender_report,
    ntp_middle_32,
    ntp_now,
    parse_compound,
    round_trip_seconds,
)
from .udpbatch import MSG_TRUNC, GsoStage, RingGather, RingReceiver, gso_available, gso_chunks, sendmmsg_available

TICK_SECONDS = 0.1
RATE_SAMPLE_SECONDS = 0.5
REPORT_SECONDS = 1.0
FREEZE_SECONDS = 1.0  # no media forwarded for longer than this while the source is live = a freeze
LAYER_IDLE_SECONDS = 1.0
PROVISIONAL_RATE_SECONDS = 0.2
RECEIVE_BUFFER_BYTES = 1 << 20  # ≈ 20 ms at full rate: overload becomes loss, not latency
SEND_BUFFER_BYTES = 4 << 20
MAX_BATCHES_PER_WAKE = 8

_ADDRESS_IP_MASK = 0xFFFFFFFF
# First payload octets of H.264 non-IDR slices (NAL type 1, any NRI/F bits): never the start of a keyframe.
_NON_IDR_SLICE_OCTETS = frozenset(octet for octet in range(256) if octet & 0x1F == 1)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    media_host: str = "127.0.0.1"
    media_port: int = 0
    rtcp_port: int = 0  # 0: media_port + 1 when media_port is fixed, else any free port
    ring_slots: int = 8192
    batch: int = 64
    use_gso: bool = True
    burst_seconds: float = 0.05
    max_queue_delay_seconds: float = 0.2


class Layer:
    """One incoming SSRC (a simulcast layer) of a track, with what the relay measured of it."""

    __slots__ = (
        "bytes_in",
        "first_packet_time",
        "keyframes_in",
        "last_keyframe_timestamp",
        "last_packet_time",
        "last_sender_report_middle",
        "last_sender_report_time",
        "packets_in",
        "rate",
        "reception",
        "sender_key",
        "ssrc",
        "track",
    )

    def __init__(self, ssrc: int, sender_key: int, track: Track) -> None:
        self.ssrc = ssrc
        self.sender_key = sender_key
        self.track = track
        self.bytes_in = 0
        self.packets_in = 0
        self.keyframes_in = 0
        self.last_keyframe_timestamp = -1
        self.last_packet_time = 0.0
        self.first_packet_time = 0.0
        self.rate = RateMeter()
        self.reception = ReceptionStats()
        self.last_sender_report_middle = 0
        self.last_sender_report_time = 0.0


class Track:
    """Media one classroom sends in one session: its layers, and the outputs that receive it."""

    def __init__(self, session: str, classroom: str) -> None:
        self.session = session
        self.classroom = classroom
        self.layers: dict[int, Layer] = {}
        self.outputs: list[Output] = []
        self.keyframe_requests_sent = 0

    def layer_rates(self, now: float) -> list[tuple[int, float]]:
        rates = []
        for layer in self.layers.values():
            if now - layer.last_packet_time >= LAYER_IDLE_SECONDS:
                continue
            rate = layer.rate.rate_bytes_per_second
            age = now - layer.first_packet_time
            if rate <= 0 and age >= PROVISIONAL_RATE_SECONDS:
                rate = layer.bytes_in / age  # before the meter's first interval: a quick join beats waiting
            rates.append((layer.ssrc, rate))
        return rates


class Output:
    """A destination receiving one track: a branch receiving the master, or the master a branch camera."""

    def __init__(
        self,
        session: str,
        classroom: str,
        track: Track,
        destination: tuple[str, int],
        budget_bytes_per_second: float,
        config: EngineConfig,
        now: float,
    ) -> None:
        self.session = session
        self.classroom = classroom
        self.track = track
        self.config = config
        self.destination = destination
        self.destination_ip = address_key(destination[0], 0) & _ADDRESS_IP_MASK
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        self.sock.bind((config.media_host, 0))
        self.sock.connect(destination)
        self.sock.setblocking(False)  # a full send buffer drops (counted); it must never stall the loop
        self.fd = self.sock.fileno()
        self.budget = float(budget_bytes_per_second)
        self.bucket = TokenBucket(self.budget, config.burst_seconds, now)
        self.queue = PacedQueue(self.budget, config.max_queue_delay_seconds)
        self.forwarder = Forwarder()
        self.history = OutputHistory()
        self.gso = GsoStage() if config.use_gso else None
        self.target_ssrc = NO_TARGET
        self.send_rate = RateMeter()
        self.bytes_out = 0
        self.packets_out = 0
        self.keyframes_out = 0
        self.last_keyframe_timestamp = -1
        self.freezes = 0
        self.frozen = False
        self.last_media_time = 0.0
        self.nacks_received = 0
        self.retransmissions = 0
        self.nack_misses = 0
        self.plis_received = 0
        self.pacer_drops = 0
        self.send_errors = 0
        self.loss_ratio = 0.0
        self.jitter_seconds = 0.0
        self.rtt_seconds = -1.0

    @property
    def source_classroom(self) -> str:
        return self.track.classroom

    @property
    def relay_address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def set_budget(self, budget_bytes_per_second: float) -> None:
        self.budget = float(budget_bytes_per_second)
        self.bucket.set_rate(self.budget, self.config.burst_seconds)
        self.queue.set_rate(self.budget, self.config.max_queue_delay_seconds)

    def close(self) -> None:
        self.sock.close()


class LayerBatch:
    """The packets one layer contributed to the current batch: what every output following it sends.

    Built once per layer per batch and shared by all its outputs, so per-output work is a rewrite loop
    and one send call.
    """

    __slots__ = (
        "gather_start",
        "gso_chunks",
        "header_offsets",
        "in_order",
        "keyframe_timestamps",
        "layer",
        "sequences",
        "serials",
        "sizes",
        "slots",
        "timestamps",
        "total_bytes",
    )

    def __init__(
        self,
        layer: Layer,
        slots: Sequence[int],
        serials: Sequence[int],
        header_offsets: Sequence[int],
        sizes: Sequence[int],
        sequences: Sequence[int],
        timestamps: Sequence[int],
        keyframe_timestamps: list[int],
    ) -> None:
        self.layer = layer
        self.slots = slots
        self.serials = serials
        self.header_offsets = header_offsets  # where each packet's sequence number starts in the ring
        self.sizes = sizes
        self.sequences = sequences
        self.timestamps = timestamps
        self.keyframe_timestamps = keyframe_timestamps
        self.total_bytes = sum(sizes)
        self.in_order = _consecutive(sequences)
        self.gather_start = 0
        self.gso_chunks: list[tuple[int, int, int]] = []


def _consecutive(sequence_numbers: Sequence[int]) -> bool:
    """Each number is the previous + 1 (no loss, no reordering, no wrap): compared at C speed."""
    first = sequence_numbers[0]
    count = len(sequence_numbers)
    return first + count <= 0x10000 and tuple(sequence_numbers) == tuple(range(first, first + count))


class Session:
    def __init__(self, session: str, master: str) -> None:
        self.session = session
        self.master = master
        self.tracks: dict[str, Track] = {}
        self.branches: dict[str, dict] = {}  # classroom -> the set_branch request as last applied
        self.downlinks: dict[str, Output] = {}  # branch classroom -> output carrying the master
        self.returns: dict[str, Output] = {}  # branch classroom -> output carrying it to the master

    def track(self, classroom: str) -> Track:
        track = self.tracks.get(classroom)
        if track is None:
            track = self.tracks[classroom] = Track(self.session, classroom)
        return track

    def is_member(self, classroom: str) -> bool:
        return classroom == self.master or classroom in self.branches

    def outputs(self) -> list[Output]:
        return [*self.downlinks.values(), *self.returns.values()]


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.instance = os.urandom(8).hex()
        self.started_wall = time.time()
        self.lock = threading.Lock()
        self.running = False
        self.ring = PacketRing(config.ring_slots)
        self.header = rtp.RtpHeader()
        self.drops = rtp.DropCounters()
        self.admission = AdmissionTable()
        self.sessions: dict[str, Session] = {}
        self.layers: dict[int, Layer] = {}  # incoming SSRC -> layer: the hot-path lookup
        self.outputs_by_ssrc: dict[int, Output] = {}  # outgoing SSRC -> output, to route RTCP feedback
        self.throttle = KeyframeRequestThrottle()
        self.keyframe_requests_forwarded = 0
        self.gso_enabled = config.use_gso and gso_available()
        self.config = config = replace(config, use_gso=self.gso_enabled)
        self.relay_ssrc = int.from_bytes(os.urandom(4), "big")

        self.media_socket = self._bind_udp(config.media_port)
        media_port = self.media_socket.getsockname()[1]
        rtcp_port = config.rtcp_port or (media_port + 1 if config.media_port else 0)
        self.rtcp_socket = self._bind_udp(rtcp_port)
        self.media_receiver = RingReceiver(self.media_socket, self.ring, config.batch)
        # Outputs send whole runs straight from the ring; without sendmmsg they go packet by packet.
        self.gather = RingGather(self.ring, config.batch) if sendmmsg_available() else None
        self.rtcp_buffer = bytearray(rtp.MAX_DATAGRAM_BYTES)
        self.poller = select.epoll()
        self.poller.register(self.media_socket.fileno(), select.EPOLLIN)
        self.poller.register(self.rtcp_socket.fileno(), select.EPOLLIN)
        self.outputs_by_fd: dict[int, Output] = {}
        self.all_outputs: list[Output] = []
        self.outputs_with_queue: set[Output] = set()
        now = time.monotonic()
        self.next_tick = now
        self.next_rate_sample = now
        self.next_report = now + REPORT_SECONDS
        self.loop_batches = 0

    # ----------------------------------------------------------------- sockets and addresses
    def _bind_udp(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        sock.bind((self.config.media_host, port))
        sock.setblocking(False)
        return sock

    @property
    def media_address(self) -> tuple[str, int]:
        return self.media_socket.getsockname()

    @property
    def rtcp_address(self) -> tuple[str, int]:
        return self.rtcp_socket.getsockname()

    # ----------------------------------------------------------------- the loop
    def run(self) -> None:
        self.running = True
        while self.running:
            self.run_once()

    def stop(self) -> None:
        self.running = False

    def run_once(self, max_wait: float = 0.05) -> None:
        now = time.monotonic()
        wait = min(max_wait, max(0.0, self.next_tick - now))
        if self.outputs_with_queue:
            wait = min(wait, 0.001)
        events = self.poller.poll(wait)
        with self.lock:
            now = time.monotonic()
            media_fd = self.media_receiver.fd
            for fd, _mask in events:
                if fd == media_fd:
                    self._drain_media(now)
                elif fd == self.rtcp_socket.fileno():
                    self._drain_rtcp(self.rtcp_socket, now, None)
                else:
                    output = self.outputs_by_fd.get(fd)
                    if output is not None:
                        self._drain_rtcp(output.sock, now, output)
            if self.outputs_with_queue:
                self._drain_queues(now)
            if now >= self.next_tick:
                self._tick(now)

    def _drain_media(self, now: float) -> None:
        receiver = self.media_receiver
        for _ in range(MAX_BATCHES_PER_WAKE):
            first, count = receiver.receive()
            if count == 0:
                return
            self.loop_batches += 1
            for output in self.all_outputs:
                output.bucket.refill(now)
            self._process_batch(first, count, now)
            if self.gso_enabled:
                for output in self.all_outputs:
                    if output.gso.segments:
                        self._flush_gso(output)
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
        for batch in batches:
            self._account_layer(batch, now)
        if self.gather is not None:
            self._load_gather(batches)
        self._forward_batches(batches, now)

    def _classify_single_source(
        self,
        first: int,
        lengths: Sequence[int],
        flags: Sequence[int],
        keys: Sequence[int],
        fields: Sequence[int],
    ) -> tuple[dict[Layer, Sequence[int]], list[tuple[Layer, int]]] | None:
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
    ) -> tuple[dict[Layer, Sequence[int]], list[tuple[Layer, int]]]:
        """Validate and admit every packet: per layer, the batch indices of its packets in arrival order,
        and the (layer, index) of keyframe packets (also marked in the ring)."""
        data = self.ring.data
        slot_bytes = self.ring.slot_bytes
        ring_keyframe = self.ring.keyframe
        layers_get = self.layers.get
        accepted: dict[Layer, Sequence[int]] = {}
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
                    layer = self._admit_layer(key, ssrc)
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
                current_indices = accepted.get(layer)
                if current_indices is None:
                    current_indices = accepted[layer] = []
            current_indices.append(index)
        return accepted, keyframes

    def _classify_unusual(self, slot: int, offset: int, size: int, flag: int, key: int, now: float) -> Layer | None:
        """Everything off the fast path: truncated, RTCP, a hello, RTP with CSRCs/extension/padding, junk."""
        data = self.ring.data
        if flag & MSG_TRUNC:
            self.drops.counts[rtp.TOO_LARGE] += 1
            return None
        if size >= 2 and 192 <= data[offset + 1] <= 223:
            self._handle_rtcp(data, offset, size, key, now, None)
            return None
        header = self.header
        reason = rtp.parse_rtp(data, offset, size, header)
        if reason:
            if reason == rtp.BAD_VERSION and self._handle_hello(data, offset, size, key):
                return None
            self.drops.counts[reason] += 1
            return None
        layer = self.layers.get(header.ssrc)
        if layer is None or layer.sender_key != key:
            layer = self._admit_layer(key, header.ssrc)
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
        keyframe_timestamps = [timestamps[index] for owner, index in keyframes if owner is layer]
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
        for timestamp in batch.keyframe_timestamps:
            if timestamp != layer.last_keyframe_timestamp:
                layer.last_keyframe_timestamp = timestamp
                layer.keyframes_in += 1

    def _load_gather(self, batches: list[LayerBatch]) -> None:
        """Point the shared iovecs at this batch's packets, layer after layer; plan the GSO chunks."""
        gather = self.gather
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

    def _forward_batches(self, batches: list[LayerBatch], now: float) -> None:
        """Hand each output the packets of the layer it follows (or walk them one by one at a switch)."""
        by_track: dict[Track, dict[int, LayerBatch]] = {}
        for batch in batches:
            by_track.setdefault(batch.layer.track, {})[batch.layer.ssrc] = batch
        for track, by_ssrc in by_track.items():
            ambiguous = len(by_ssrc) != sum(batch.layer.track is track for batch in batches)
            for output in track.outputs:
                forwarder = output.forwarder
                target = output.target_ssrc
                switching = target != forwarder.layer_ssrc and target in by_ssrc and by_ssrc[target].keyframe_timestamps
                if ambiguous or switching:
                    # A layer switch lands inside this batch: keep the exact arrival order across layers.
                    arrival_order = sorted(slot for batch in by_ssrc.values() for slot in batch.slots)
                    self._forward_packetwise(output, arrival_order, now)
                    continue
                batch = by_ssrc.get(forwarder.layer_ssrc)
                if batch is not None:
                    self._forward_run(output, batch, now)

    def _forward_run(self, output: Output, batch: LayerBatch, now: float) -> None:
        """Send one output its layer's packets of this batch: one rewrite loop, one send call."""
        bucket = output.bucket
        if output.queue.entries or bucket.tokens < batch.total_bytes or self.gather is None:
            self._forward_packetwise(output, batch.slots, now)  # the pacer decides packet by packet
            return
        bucket.tokens -= batch.total_bytes
        for timestamp in batch.keyframe_timestamps:
            if timestamp != output.last_keyframe_timestamp:
                output.last_keyframe_timestamp = timestamp
                output.keyframes_out += 1
        forwarder = output.forwarder
        forwarder.rewrite_run(
            self.ring.data, batch.header_offsets, batch.sequences, batch.timestamps, batch.in_order, now
        )
        output.history.remember_run(
            forwarder.sequence_offset, batch.sequences, batch.slots, batch.serials, batch.in_order
        )
        self._send_gathered(output, batch)
        output.bytes_out += batch.total_bytes
        output.packets_out += len(batch.slots)
        output.last_media_time = now

    def _send_gathered(self, output: Output, batch: LayerBatch) -> None:
        gather = self.gather
        fd = output.fd
        if self.gso_enabled:
            for start, count, segment_bytes in batch.gso_chunks:
                if not gather.send_segmented(fd, start, count, segment_bytes):
                    self._count_send_errno(output, gather.last_errno, count)
            return
        start = batch.gather_start
        end = start + len(batch.slots)
        while start < end:
            sent = gather.send_each(fd, start, end - start)
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
        for slot in slots:
            ssrc = ring_ssrc[slot]
            keyframe = ring_keyframe[slot]
            sequence_number, timestamp = ring_sequence[slot], ring_timestamp[slot]
            if forwarder.layer_ssrc != ssrc:
                if not (keyframe and output.target_ssrc == ssrc):
                    continue
                output.queue.clear()  # packets of the old layer would only confuse the decoder now
                self.outputs_with_queue.discard(output)
                forwarder.switch_to(ssrc, sequence_number, timestamp, now)
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
        if keyframe and timestamp != output.last_keyframe_timestamp:
            output.last_keyframe_timestamp = timestamp
            output.keyframes_out += 1
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
        if stage is None:
            out_sequence = forwarder.rewrite(self.ring.data, offset, sequence_number, timestamp, now)
            output.history.remember(out_sequence, slot, serial)
            self._send(output, self.ring.view[offset : offset + size])
        else:
            if stage.must_flush_before(size):
                self._flush_gso(output)
            position = stage.append(self.ring.view, offset, size)
            out_sequence = forwarder.rewrite(stage.buffer, position, sequence_number, timestamp, now)
            output.history.remember(out_sequence, slot, serial)
            if stage.full():
                self._flush_gso(output)
        output.bytes_out += size
        output.packets_out += 1
        output.last_media_time = now

    def _send(self, output: Output, packet: memoryview | bytes) -> None:
        try:
            output.sock.send(packet)
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

    def _flush_gso(self, output: Output) -> None:
        stage = output.gso
        segments = stage.segments
        try:
            stage.flush(output.sock)
        except OSError as error:
            self._count_send_error(output, error, segments)

    def _drain_queues(self, now: float) -> None:
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
                self._send(output, ring.view[offset : offset + size])
                output.bytes_out += size
                output.packets_out += 1
                output.last_media_time = now
            if not queue.entries:
                self.outputs_with_queue.discard(output)

    # ----------------------------------------------------------------- admission
    def _is_member(self, session: str, classroom: str) -> bool:
        found = self.sessions.get(session)
        return found is not None and found.is_member(classroom)

    def _handle_hello(self, data: bytearray, offset: int, size: int, key: int) -> bool:
        token = parse_hello(data, offset, size)
        if token is None:
            return False
        reason, _sender = self.admission.admit(key, token, self._is_member)
        if reason:
            self.drops.counts[reason] += 1
        return True

    def _admit_layer(self, key: int, ssrc: int) -> Layer | None:
        reason, sender = self.admission.check_ssrc(key, ssrc)
        if sender is None:
            self.drops.counts[reason] += 1
            return None
        session = self.sessions.get(sender.session)
        if session is None or not session.is_member(sender.classroom):
            self.drops.counts[rtp.NOT_ROUTED] += 1
            return None
        existing = self.layers.get(ssrc)
        if existing is not None:  # the same SSRC now legitimately comes from a re-admitted address
            existing.track.layers.pop(ssrc, None)
        track = session.track(sender.classroom)
        layer = Layer(ssrc, key, track)
        layer.first_packet_time = time.monotonic()
        track.layers[ssrc] = layer
        self.layers[ssrc] = layer
        return layer

    # ----------------------------------------------------------------- RTCP
    def _drain_rtcp(self, sock: socket.socket, now: float, output: Output | None) -> None:
        buffer = self.rtcp_buffer
        for _ in range(64):
            try:
                size, address = sock.recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                if output is not None:
                    output.send_errors += 1
                continue
            except OSError:
                return
            try:
                key = address_key(address[0], address[1])
            except (OSError, TypeError, IndexError):
                continue
            if size >= 2 and 192 <= buffer[1] <= 223:
                self._handle_rtcp(buffer, 0, size, key, now, output)
            else:
                parse_result = rtp.parse_rtp(buffer, 0, size, self.header)
                if parse_result == rtp.BAD_VERSION and self._handle_hello(buffer, 0, size, key):
                    continue
                self.drops.counts[rtp.BAD_RTCP if parse_result == rtp.OK else parse_result] += 1

    def _handle_rtcp(
        self, buffer: bytearray, offset: int, size: int, key: int, now: float, output: Output | None
    ) -> None:
        items = parse_compound(buffer, offset, size)
        if items is None:
            self.drops.counts[rtp.BAD_RTCP] += 1
            return
        sender = self.admission.senders.get(key) or self.admission.senders.get(key - (1 << 32))
        if sender is not None:
            self._handle_sender_rtcp(sender, key, items, now)
            return
        source_ip = key & _ADDRESS_IP_MASK
        accepted = False
        middle_now = ntp_middle_32(*ntp_now())
        for item in items:
            target = self._feedback_output(item)
            if target is None or target.destination_ip != source_ip or (output is not None and target is not output):
                continue
            accepted = True
            if isinstance(item, ReportBlock):
                target.loss_ratio = item.fraction_lost
                target.jitter_seconds = item.jitter_timestamp_units / 90_000
                rtt = round_trip_seconds(item, middle_now)
                if rtt is not None:
                    target.rtt_seconds = rtt
            elif isinstance(item, Nack):
                self._answer_nack(target, item)
            elif isinstance(item, KeyframeRequest):
                target.plis_received += 1
                self._request_keyframe(target.track, target.forwarder.layer_ssrc, now)
        if not accepted:
            self.drops.counts[rtp.UNKNOWN_SOURCE] += 1

    def _feedback_output(self, item) -> Output | None:
        if isinstance(item, ReportBlock):
            return self.outputs_by_ssrc.get(item.source_ssrc)
        if isinstance(item, Nack | KeyframeRequest):
            return self.outputs_by_ssrc.get(item.media_ssrc)
        return None

    def _handle_sender_rtcp(self, sender: PinnedSender, key: int, items: list, now: float) -> None:
        for item in items:
            if isinstance(item, SenderReport) and item.sender_ssrc in sender.ssrcs:
                layer = self.layers.get(item.sender_ssrc)
                if layer is not None:
                    layer.last_sender_report_middle = item.ntp_middle_32
                    layer.last_sender_report_time = now
                    self._remember_rtcp_port(sender, key)

    def _remember_rtcp_port(self, sender: PinnedSender, key: int) -> None:
        sender.rtcp_key = key

    def _answer_nack(self, output: Output, nack: Nack) -> None:
        ring = self.ring
        for out_sequence in nack.lost_sequences[:64]:  # bound the work one datagram can cause
            output.nacks_received += 1
            slot = output.history.find(out_sequence, ring)
            if slot < 0:
                output.nack_misses += 1
                continue
            size = ring.length[slot]
            if not output.bucket.try_take(size):
                output.nack_misses += 1  # retransmissions are inside the budget too
                continue
            offset = slot * ring.slot_bytes
            out_timestamp = output.forwarder.out_timestamp(ring.timestamp[slot])
            if ring.ssrc[slot] != output.forwarder.layer_ssrc:
                output.nack_misses += 1  # from a layer we switched away from: its offsets are gone
                continue
            output.forwarder.rewrite_copy(ring.data, offset, out_sequence, out_timestamp)
            self._send(output, ring.view[offset : offset + size])
            output.retransmissions += 1
            output.bytes_out += size
            output.packets_out += 1

    def _request_keyframe(self, track: Track, layer_ssrc: int, now: float) -> None:
        layer = track.layers.get(layer_ssrc)
        if layer is None or not self.throttle.allow(layer_ssrc, now):
            return
        sender = self.admission.senders.get(layer.sender_key)
        rtcp_key = sender.rtcp_key if sender is not None else 0
        destination = key_address(rtcp_key or layer.sender_key)
        try:
            self.rtcp_socket.sendto(build_pli(self.relay_ssrc, layer_ssrc), destination)
        except OSError:
            return
        track.keyframe_requests_sent += 1
        self.keyframe_requests_forwarded += 1

    # ----------------------------------------------------------------- timers
    def _tick(self, now: float) -> None:
        self.next_tick = now + TICK_SECONDS
        if now >= self.next_rate_sample:
            self.next_rate_sample = now + RATE_SAMPLE_SECONDS
            for layer in self.layers.values():
                layer.rate.sample(now, layer.bytes_in)
            for output in self.all_outputs:
                output.send_rate.sample(now, output.bytes_out)
                self._allocate(output, now)
        else:
            for output in self.all_outputs:
                if output.target_ssrc == NO_TARGET:  # a new output or a new source: do not wait for the meter
                    self._allocate(output, now)
        for output in self.all_outputs:
            if output.bytes_out and not output.frozen and now - output.last_media_time > FREEZE_SECONDS:
                output.frozen = True
                output.freezes += 1
            elif output.frozen and now - output.last_media_time <= FREEZE_SECONDS:
                output.frozen = False
        if now >= self.next_report:
            self.next_report = now + REPORT_SECONDS
            self._send_reports(now)

    def _allocate(self, output: Output, now: float) -> None:
        rates = output.track.layer_rates(now)
        current = output.forwarder.layer_ssrc
        target = choose_layer(rates, output.budget, current)
        output.target_ssrc = target
        if target != NO_TARGET and target != current:
            self._request_keyframe(output.track, target, now)

    def _send_reports(self, now: float) -> None:
        seconds, fraction = ntp_now()
        for output in self.all_outputs:
            if not output.packets_out:
                continue
            forwarder = output.forwarder
            elapsed = max(0.0, now - forwarder.last_out_time)
            rtp_timestamp = forwarder.last_out_timestamp + int(elapsed * forwarder.clock_rate)
            report = build_sender_report(
                forwarder.out_ssrc, seconds, fraction, rtp_timestamp, output.packets_out, output.bytes_out
            )
            host, port = output.destination
            try:
                self.rtcp_socket.sendto(report, (host, port + 1))  # RTCP on RTP port + 1 (RFC 3550 §11)
            except OSError:
                output.send_errors += 1
        for layer in self.layers.values():
            if not layer.reception.started:
                continue
            reception = layer.reception
            delay = 0
            if layer.last_sender_report_time:
                delay = int((now - layer.last_sender_report_time) * 65536)
            block = ReportBlock(
                self.relay_ssrc,
                layer.ssrc,
                reception.interval_fraction_lost(),
                reception.cumulative_lost,
                reception.extended_highest,
                int(reception.jitter),
                layer.last_sender_report_middle,
                delay,
            )
            sender = self.admission.senders.get(layer.sender_key)
            rtcp_key = sender.rtcp_key if sender is not None else 0
            with contextlib.suppress(OSError):
                self.rtcp_socket.sendto(
                    build_receiver_report(self.relay_ssrc, (block,)), key_address(rtcp_key or layer.sender_key)
                )

    # ----------------------------------------------------------------- desired state (control thread)
    def set_secrets(self, secrets: list[bytes]) -> None:
        self.admission.set_secrets(secrets)

    def set_session(self, session: str, master: str) -> Session:
        existing = self.sessions.get(session)
        if existing is not None and existing.master == master:
            return existing
        if existing is not None:
            self.remove_session(session)
        created = self.sessions[session] = Session(session, master)
        created.track(master)
        return created

    def remove_session(self, session: str) -> bool:
        found = self.sessions.pop(session, None)
        if found is None:
            return False
        for output in found.outputs():
            self._drop_output(output)
        for track in found.tracks.values():
            for ssrc in track.layers:
                self.layers.pop(ssrc, None)
                self.throttle.forget(ssrc)
        self.admission.forget_session(session)
        return True

    def set_branch(
        self,
        session: str,
        classroom: str,
        address: tuple[str, int],
        budget_bytes_per_second: float,
        uplink_budget_bytes_per_second: float | None = None,
        return_address: tuple[str, int] | None = None,
    ) -> Output:
        found = self.sessions.get(session)
        if found is None:
            raise KeyError(f"unknown session {session!r}")
        if classroom == found.master:
            raise ValueError("the master classroom cannot also be a branch of its session")
        now = time.monotonic()
        found.branches[classroom] = {
            "address": address,
            "budget": budget_bytes_per_second,
            "uplink_budget": uplink_budget_bytes_per_second,
            "return_address": return_address,
        }
        downlink = self._upsert_output(
            found.downlinks, classroom, found, found.track(found.master), address, budget_bytes_per_second, now
        )
        if return_address is not None:
            self._upsert_output(
                found.returns,
                classroom,
                found,
                found.track(classroom),
                return_address,
                uplink_budget_bytes_per_second or budget_bytes_per_second,
                now,
                receiver=found.master,
            )
        elif classroom in found.returns:
            self._drop_output(found.returns.pop(classroom))
        return downlink

    def _upsert_output(
        self,
        outputs: dict[str, Output],
        classroom: str,
        session: Session,
        track: Track,
        address: tuple[str, int],
        budget: float,
        now: float,
        receiver: str | None = None,
    ) -> Output:
        existing = outputs.get(classroom)
        destination = (str(address[0]), int(address[1]))
        if existing is not None and existing.destination == destination:
            if existing.budget != budget:
                existing.set_budget(budget)
            return existing  # idempotent: same desired state leaves the stream undisturbed
        if existing is not None:
            self._drop_output(existing)
        output = Output(session.session, receiver or classroom, track, destination, budget, self.config, now)
        outputs[classroom] = output
        track.outputs.append(output)
        self.all_outputs.append(output)
        self.outputs_by_fd[output.fd] = output
        self.outputs_by_ssrc[output.forwarder.out_ssrc] = output
        self.poller.register(output.fd, select.EPOLLIN)
        return output

    def _drop_output(self, output: Output) -> None:
        if output in output.track.outputs:
            output.track.outputs.remove(output)
        if output in self.all_outputs:
            self.all_outputs.remove(output)
        self.outputs_with_queue.discard(output)
        self.outputs_by_fd.pop(output.fd, None)
        self.outputs_by_ssrc.pop(output.forwarder.out_ssrc, None)
        with contextlib.suppress(OSError, ValueError):
            self.poller.unregister(output.fd)
        output.close()

    def remove_branch(self, session: str, classroom: str) -> bool:
        found = self.sessions.get(session)
        if found is None or classroom not in found.branches:
            return False
        del found.branches[classroom]
        for outputs in (found.downlinks, found.returns):
            output = outputs.pop(classroom, None)
            if output is not None:
                self._drop_output(output)
        track = found.tracks.pop(classroom, None)
        if track is not None:
            for ssrc in track.layers:
                self.layers.pop(ssrc, None)
        self.admission.forget_session(session, classroom)
        return True

    def register_sender(self, session: str, classroom: str, token: str, address: tuple[str, int]) -> int:
        key = address_key(str(address[0]), int(address[1]))
        reason, sender = self.admission.admit(key, token, self._is_member)
        if sender is None:
            self.drops.counts[reason] += 1
            return reason
        if (sender.session, sender.classroom) != (session, classroom):
            self.admission.forget(key)
            self.drops.counts[rtp.TOKEN_WRONG_BINDING] += 1
            return rtp.TOKEN_WRONG_BINDING
        sender.how = "registered"
        return rtp.OK

    def unregister_sender(self, address: tuple[str, int]) -> bool:
        key = address_key(str(address[0]), int(address[1]))
        sender = self.admission.forget(key)
        if sender is None:
            return False
        for ssrc in sender.ssrcs:
            layer = self.layers.pop(ssrc, None)
            if layer is not None:
                layer.track.layers.pop(ssrc, None)
        return True

    # ----------------------------------------------------------------- stats (control and metrics threads)
    def snapshot(self) -> dict:
        now = time.monotonic()
        sessions = {}
        for session_id, found in self.sessions.items():
            tracks = {}
            for classroom, track in found.tracks.items():
                layers = sorted(track.layers.values(), key=lambda layer: layer.rate.rate_bytes_per_second)
                received = sum(layer.reception.received for layer in layers)
                expected = sum(layer.reception.expected for layer in layers)
                tracks[classroom] = {
                    "bytes_in": sum(layer.bytes_in for layer in layers),
                    "packets_in": sum(layer.packets_in for layer in layers),
                    "keyframes_in": sum(layer.keyframes_in for layer in layers),
                    "loss_ratio": max(0.0, (expected - received) / expected) if expected else 0.0,
                    "jitter_seconds": max((layer.reception.jitter_seconds for layer in layers), default=0.0),
                    "keyframe_requests_sent": track.keyframe_requests_sent,
                    "live": any(now - layer.last_packet_time < LAYER_IDLE_SECONDS for layer in layers),
                    "layers": [
                        {
                            "ssrc": layer.ssrc,
                            "rate_bytes_per_second": layer.rate.rate_bytes_per_second,
                            "bytes_in": layer.bytes_in,
                            "packets_in": layer.packets_in,
                            "source": list(key_address(layer.sender_key)),
                        }
                        for layer in layers
                    ],
                }
            outputs = []
            for output in found.outputs():
                rates = output.track.layer_rates(now)
                outputs.append(
                    {
                        "classroom": output.classroom,
                        "source_classroom": output.source_classroom,
                        "address": list(output.destination),
                        "relay_address": list(output.relay_address),
                        "ssrc": output.forwarder.out_ssrc,
                        "budget_bytes_per_second": output.budget,
                        "send_rate_bytes_per_second": output.send_rate.rate_bytes_per_second,
                        "bytes_out": output.bytes_out,
                        "packets_out": output.packets_out,
                        "current_layer": layer_rank(rates, output.forwarder.layer_ssrc),
                        "current_ssrc": output.forwarder.layer_ssrc
                        if output.forwarder.layer_ssrc != NO_LAYER
                        else None,
                        "target_ssrc": output.target_ssrc if output.target_ssrc != NO_TARGET else None,
                        "layer_switches": output.forwarder.switches,
                        "loss_ratio": output.loss_ratio,
                        "jitter_seconds": output.jitter_seconds,
                        "rtt_seconds": output.rtt_seconds if output.rtt_seconds >= 0 else None,
                        "keyframes_out": output.keyframes_out,
                        "freezes": output.freezes,
                        "nacks_received": output.nacks_received,
                        "retransmissions": output.retransmissions,
                        "nack_misses": output.nack_misses,
                        "plis_received": output.plis_received,
                        "pacer_drops": output.pacer_drops,
                        "send_errors": output.send_errors,
                        "queued_bytes": output.queue.queued_bytes,
                    }
                )
            sessions[session_id] = {
                "master": found.master,
                "branches": sorted(found.branches),
                "tracks": tracks,
                "outputs": outputs,
            }
        return {
            "instance": self.instance,
            "uptime_seconds": time.time() - self.started_wall,
            "media_address": list(self.media_address),
            "rtcp_address": list(self.rtcp_address),
            "gso": self.gso_enabled,
            "drops": self.drops.as_dict(),
            "keyframe_requests_forwarded": self.keyframe_requests_forwarded,
            "senders": [
                {
                    "address": list(key_address(key)),
                    "session": sender.session,
                    "classroom": sender.classroom,
                    "how": sender.how,
                    "ssrcs": sorted(sender.ssrcs),
                }
                for key, sender in self.admission.senders.items()
            ],
            "sessions": sessions,
        }

    def snapshot_locked(self) -> dict:
        with self.lock:
            return self.snapshot()

    def close(self) -> None:
        self.running = False
        with self.lock:
            for found in list(self.sessions):
                self.remove_session(found)
            self.poller.close()
            self.media_socket.close()
            self.rtcp_socket.close()
