"""What the relay forwards: sessions, their tracks and layers, and the outputs that receive them.

A ``Session`` has one ``Track`` per sending classroom; a track has ``Layer``s (one per incoming SSRC, the
simulcast layers) and ``Output``s (one per destination, each with its own socket, pacer, forwarder and
NACK history). ``Streams`` holds the tables the loop looks packets up in. ``LayerBatch`` is what one layer
contributed to one received batch, built by ingest.py and sent by egress.py.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass

from .admission import address_key
from .allocator import NO_TARGET, RateMeter
from .buffer import OutputHistory
from .forwarder import Forwarder
from .pacer import PacedQueue, TokenBucket
from .rtcp import ReceptionStats
from .udpbatch import GsoStage

LAYER_IDLE_SECONDS = 1.0
PROVISIONAL_RATE_SECONDS = 0.2
SEND_BUFFER_BYTES = 4 << 20
ADDRESS_IP_MASK = 0xFFFFFFFF  # the IPv4 address part of an address key (admission.address_key)


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
        self.destination_ip = address_key(destination[0], 0) & ADDRESS_IP_MASK
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


class Streams:
    """The lookup tables shared by the parts of the loop (mutated in place, never replaced)."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.layers: dict[int, Layer] = {}  # incoming SSRC -> layer: the hot-path lookup
        self.outputs_by_ssrc: dict[int, Output] = {}  # outgoing SSRC -> output, to route RTCP feedback
        self.outputs_by_fd: dict[int, Output] = {}  # output socket -> output, for RTCP arriving on it
        self.all_outputs: list[Output] = []
        self.outputs_with_queue: set[Output] = set()  # outputs the pacer holds packets for
