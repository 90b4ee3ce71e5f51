"""What the relay forwards: sessions, their tracks and layers, and the outputs that receive them.

A ``Session`` has ``Member``s (classrooms that send and receive) and one ``Track`` per (classroom, track
name): audio, camera, courseware. A track has ``Layer``s (one per incoming SSRC: the simulcast layers of a
video track; an audio track is never layered) and ``Output``s (one per receiving member, each with its own
socket, pacer, forwarder and NACK history). ``Streams`` holds the tables the loop looks packets up in.
``LayerBatch`` is what one layer contributed to one received batch, built by ingest.py and sent by egress.py.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from .admission import address_key, key_address
from .allocator import NO_TARGET, RateMeter
from .buffer import HeaderLanes, OutputHistory
from .forwarder import Forwarder
from .pacer import PacedQueue, TokenBucket
from .rtcp import ReceptionStats
from .udpbatch import GsoStage

LAYER_IDLE_SECONDS = 1.0
PROVISIONAL_RATE_SECONDS = 0.2
SEND_BUFFER_BYTES = 4 << 20
ADDRESS_IP_MASK = 0xFFFFFFFF  # the IPv4 address part of an address key (admission.address_key)
RTCP_PORT_STEP = 1 << 32  # address_key(host, port + 1) - address_key(host, port)
AUDIO = "audio"
VIDEO = "video"
DEFAULT_CLOCK_RATES = {AUDIO: 48_000, VIDEO: 90_000}


def sockaddr_in(host: str, port: int) -> bytes:
    """A ``struct sockaddr_in`` (16 bytes): family in host order, port and address in network order."""
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(host) + bytes(8)


def connected_twin(sock: socket.socket, destination: tuple[str, int]) -> socket.socket | None:
    """A second socket on ``sock``'s own address and port, connected to ``destination``: media leaves
    through it, so the kernel reuses one cached route instead of looking one up per datagram, while
    ``sock`` stays unconnected to receive the receiver's RTCP from any port. The kernel hands a datagram
    from ``destination`` to the connected twin and every other one to ``sock``. ``sock`` must have been
    bound with SO_REUSEPORT (ports.py, ``shareable``); the option is cleared on both afterwards so no
    other socket can join the port. None when the twin cannot be made (media then names its destination
    in every send)."""
    if sock.getsockname()[1] == 0:
        return None  # not bound yet: there is no port to share
    twin = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    made: socket.socket | None = twin
    try:
        twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        twin.bind(sock.getsockname())
        twin.connect(destination)
        twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
    except OSError:
        twin.close()
        made = None
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
    return made


@dataclass(frozen=True, slots=True)
class EngineConfig:
    media_host: str = "127.0.0.1"
    media_port: int = 0
    rtcp_port: int = 0  # 0: media_port + 1 when media_port is fixed, else any free port
    media_ports: tuple[int, int] | None = None  # every socket is bound inside this range when set
    max_sessions: int = 256
    max_members_per_session: int = 256  # a 名校网络课堂 fans one school out to ~200 classrooms
    max_outputs: int = 4096
    ring_slots: int = 8192
    batch: int = 64
    use_gso: bool = True
    burst_seconds: float = 0.05
    max_queue_delay_seconds: float = 0.2
    # While media wake-ups come closer together than this, the loop polls instead of sleeping in epoll for
    # up to this long after the last one (engine.py); 0: always sleep. Off by default: it trades a core's
    # idle time (and CPU quota) for the ~30 µs a wake-up costs.
    busy_poll_seconds: float = 0.0


class Layer:
    """One incoming SSRC of a track (a simulcast layer of a video track; audio has one), with what the relay
    measured of it."""

    __slots__ = (
        "bytes_in",
        "first_packet_time",
        "frame_ticks",
        "keyframes_in",
        "last_keyframe_timestamp",
        "last_packet_time",
        "last_sender_report_middle",
        "last_sender_report_time",
        "last_timestamp",
        "packets_in",
        "rate",
        "reception",
        "sender_key",
        "sender_report_timestamp",
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
        self.last_timestamp = -1
        # Timestamp step between frames (video) or packets (audio): the step a layer switch continues with.
        self.frame_ticks = track.clock_rate // (50 if track.is_audio else 30)
        self.rate = RateMeter()
        self.reception = ReceptionStats(track.clock_rate)
        self.last_sender_report_middle = 0
        self.last_sender_report_time = 0.0  # monotonic arrival of its last sender report; 0 before one
        self.sender_report_timestamp = 0  # the RTP timestamp that report mapped to its NTP time


@dataclass(frozen=True, slots=True)
class TrackSpec:
    """A track a classroom publishes, as the control plane declares it."""

    name: str
    kind: str  # "audio" or "video"
    source: str  # metrics label: camera, courseware, microphone, ...
    clock_rate: int
    declared_layer_rates: tuple[float, ...] = ()  # bytes/s of the simulcast layers the control plane expects


class Track:
    """One track one classroom publishes in one session: its layers, and the outputs that receive it."""

    def __init__(self, session: str, classroom: str, spec: TrackSpec) -> None:
        self.session = session
        self.classroom = classroom
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        self.is_audio = spec.kind == AUDIO
        self.clock_rate = spec.clock_rate
        self.layers: dict[int, Layer] = {}
        self.outputs: list[Output] = []
        self.keyframe_requests_sent = 0

    def source_ticks(self, ssrc: int, timestamp: int) -> float | None:
        """``ssrc``'s RTP ``timestamp`` on its sender's report clock (NTP middle 32 bits), in ticks; None
        until the layer has a sender report. Comparable between layers of one sender (forwarder.py)."""
        layer = self.layers.get(ssrc)
        if layer is None or not layer.last_sender_report_time:
            return None
        since_report = (timestamp - layer.sender_report_timestamp) & 0xFFFFFFFF
        if since_report >= 0x80000000:
            since_report -= 0x100000000
        return layer.last_sender_report_middle / 65536 * self.clock_rate + since_report

    def layer_rates(self, now: float) -> list[tuple[int, float]]:
        rates = []
        for layer in self.layers.values():
            if now - layer.last_packet_time >= LAYER_IDLE_SECONDS:
                continue
            rate = layer.rate.rate_bytes_per_second
            age = now - layer.first_packet_time
            if rate <= 0 and age > 0:
                rate = layer.bytes_in / max(age, PROVISIONAL_RATE_SECONDS)  # before the meter's first interval
            rates.append((layer.ssrc, rate))
        return rates

    def newest_layer(self, now: float) -> Layer | None:
        """The layer that carried the latest packet (audio: a restarted encoder's new SSRC wins at once)."""
        live = [layer for layer in self.layers.values() if now - layer.last_packet_time < LAYER_IDLE_SECONDS]
        return max(live, key=lambda layer: layer.last_packet_time, default=None)


class Output:
    """One (source classroom, track) sent to one receiving member: its own port in the media port range,
    token bucket, queue, forwarder and NACK history. On that port: ``sock``, not connected, so RTCP from
    the receiver's RTP port + 1 (or any refused port) arrives on it; and ``send_sock``, its connected twin
    that media leaves through (RTCP from the receiver's RTP port, rtcp-mux, arrives there). Both are on the
    loop's poller."""

    def __init__(
        self,
        session: str,
        classroom: str,
        track: Track,
        destination: tuple[str, int],
        budget_bytes_per_second: float,
        config: EngineConfig,
        now: float,
        sock: socket.socket,
    ) -> None:
        self.session = session
        self.classroom = classroom
        self.track = track
        self.config = config
        self.destination = destination
        self.destination_key = address_key(destination[0], destination[1])
        self.destination_ip = self.destination_key & ADDRESS_IP_MASK
        # A raw sockaddr_in for sendmmsg/sendmsg on the unconnected socket (udpbatch.py).
        self.sockaddr = bytearray(sockaddr_in(destination[0], destination[1]))
        self.sock = sock
        self.fd = sock.fileno()
        twin = connected_twin(sock, destination)
        self.connected = twin is not None
        self.send_sock = twin if twin is not None else sock
        self.send_fd = self.send_sock.fileno()
        for own in {sock, self.send_sock}:
            own.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            own.setblocking(False)  # a full send buffer drops (counted); it must never stall the loop
        self.budget = float(budget_bytes_per_second)
        self.bucket = TokenBucket(self.budget, config.burst_seconds, now)
        self.queue = PacedQueue(self.budget, config.max_queue_delay_seconds)
        self.forwarder = Forwarder(clock_rate=track.clock_rate)
        self.forwarder.source_ticks = track.source_ticks
        self.history = OutputHistory()
        self.gso: GsoStage | None = None  # egress.py makes it on first use (67 KB: most outputs never need one)
        self.messages_base = 0  # this output's sendmmsg headers (egress.py prepares them)
        self.messages: object = None
        self.sockaddr_address = 0
        self.target_ssrc = NO_TARGET
        self.send_rate = RateMeter()
        self.bytes_out = 0
        self.packets_out = 0
        self.keyframes_out = 0
        self.last_keyframe_timestamp = -1
        self.freezes = 0
        self.frozen = False
        self.last_media_time = 0.0
        self.joined_time = now
        self.first_keyframe_time = -1.0
        self.nacks_received = 0
        self.retransmissions = 0
        self.nack_misses = 0
        self.plis_received = 0
        self.pacer_drops = 0
        self.send_errors = 0
        self.rtcp_key = 0  # where the receiver's RTCP came from: our sender reports go there
        self.rtcp_refused = 0
        # None until the receiver reported: a receiver that never sent RTCP is unknown, not loss-free.
        self.loss_ratio: float | None = None
        self.jitter_seconds: float | None = None
        self.rtt_seconds: float | None = None

    @property
    def source_classroom(self) -> str:
        return self.track.classroom

    @property
    def relay_address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def rtcp_destination(self) -> tuple[str, int]:
        """Where sender reports go: where the receiver's RTCP came from, else RTP port + 1 (RFC 3550 §11)."""
        if self.rtcp_key:
            return key_address(self.rtcp_key)
        return self.destination[0], self.destination[1] + 1

    def accepts_rtcp_from(self, key: int) -> bool:
        """The receiver's RTP port (rtcp-mux, RFC 5761, or symmetric RTCP) or port + 1 (RFC 3550)."""
        return key == self.destination_key or key == self.destination_key + RTCP_PORT_STEP

    def set_budget(self, budget_bytes_per_second: float) -> None:
        if budget_bytes_per_second == self.budget:
            return
        self.budget = float(budget_bytes_per_second)
        self.bucket.set_rate(self.budget, self.config.burst_seconds)
        self.queue.set_rate(self.budget, self.config.max_queue_delay_seconds)

    def close(self) -> None:
        self.send_sock.close()
        self.sock.close()


class LayerBatch:
    """The packets one layer contributed to the current batch: what every output following it sends.

    Built once per layer per batch and shared by all its outputs, so per-output work is a rewrite loop
    and one send call.
    """

    __slots__ = (
        "_lanes",
        "_serial_list",
        "_slot_list",
        "gather_start",
        "gso_chunks",
        "header_offsets",
        "in_order",
        "increasing",
        "keyframe_timestamps",
        "layer",
        "sequences",
        "serials",
        "sizes",
        "slot_runs",
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
        # Each number above the previous (gaps allowed: loss upstream), within half the number space: the
        # newest packet of the run is its last one.
        self.increasing = self.in_order or _increasing(sequences)
        self.gather_start = 0
        self.gso_chunks: list[tuple[int, int, int]] = []
        # (first slot, first index, count) of each stretch of consecutive slots: the strided header rewrite
        # (buffer.py) works per stretch.
        self.slot_runs = _slot_runs(slots)
        self._lanes: HeaderLanes | None = None
        self._slot_list: list[int] | None = None
        self._serial_list: list[int] | None = None

    @property
    def slot_list(self) -> list[int]:
        """``slots`` as a list made once: every output's NACK history then shares its number objects."""
        if self._slot_list is None:
            self._slot_list = list(self.slots)
        return self._slot_list

    @property
    def serial_list(self) -> list[int]:
        if self._serial_list is None:
            self._serial_list = list(self.serials)
        return self._serial_list

    @property
    def lanes(self) -> HeaderLanes:
        """The run's sequence numbers and timestamps as lanes (buffer.py), made once for all outputs."""
        if self._lanes is None:
            self._lanes = HeaderLanes(self.sequences, self.timestamps)
        return self._lanes


def _increasing(sequence_numbers: Sequence[int]) -> bool:
    """Strictly increasing without a wrap across 0, spanning less than half the number space: at C speed."""
    return sequence_numbers[-1] - sequence_numbers[0] < 0x8000 and all(
        map(operator.lt, sequence_numbers, itertools.islice(sequence_numbers, 1, None))
    )


def _slot_runs(slots: Sequence[int]) -> list[tuple[int, int, int]]:
    if isinstance(slots, range):  # the whole batch: one stretch
        return [(slots.start, 0, len(slots))]
    runs: list[tuple[int, int, int]] = []
    start_index = 0
    for index in range(1, len(slots) + 1):
        if index == len(slots) or slots[index] != slots[index - 1] + 1:
            runs.append((slots[start_index], start_index, index - start_index))
            start_index = index
    return runs


def _consecutive(sequence_numbers: Sequence[int]) -> bool:
    """Each number is the previous + 1 (no loss, no reordering, no wrap): compared at C speed."""
    first = sequence_numbers[0]
    count = len(sequence_numbers)
    return first + count <= 0x10000 and tuple(sequence_numbers) == tuple(range(first, first + count))


@dataclass(slots=True)
class Member:
    """A classroom in a session: the tracks it publishes and what it receives (one output per
    (source classroom, track)) within one downlink budget."""

    classroom: str
    tracks: dict[str, TrackSpec] = field(default_factory=dict)
    receive_host: str | None = None
    budget: float = 0.0
    outputs: dict[tuple[str, str], Output] = field(default_factory=dict)
    audio_bytes_per_second: float = 0.0
    video_bytes_per_second: float = 0.0


class Session:
    def __init__(self, session: str) -> None:
        self.session = session
        self.master: str | None = None  # only for the protocol-1 form and its stats
        self.legacy_branches: dict[str, dict] = {}  # protocol 1: classroom -> its set_branch request
        self.members: dict[str, Member] = {}
        self.tracks: dict[tuple[str, str], Track] = {}  # (classroom, track name) -> track

    def is_member(self, classroom: str) -> bool:
        return classroom in self.members

    def publishes(self, classroom: str, track: str) -> bool:
        return (classroom, track) in self.tracks

    def outputs(self) -> list[Output]:
        return [output for member in self.members.values() for output in member.outputs.values()]


class Streams:
    """The lookup tables shared by the parts of the loop (mutated in place, never replaced)."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.layers: dict[int, Layer] = {}  # incoming SSRC -> layer: the hot-path lookup
        self.outputs_by_ssrc: dict[int, Output] = {}  # outgoing SSRC -> output, to route RTCP feedback
        self.outputs_by_fd: dict[int, Output] = {}  # output socket -> output, for RTCP arriving on it
        self.all_outputs: list[Output] = []
        self.outputs_with_queue: set[Output] = set()  # outputs the pacer holds packets for
