"""One track's hop from the local repackager (ffmpeg) into the data plane.

ffmpeg cannot put a `LXHELLO1` datagram into its RTP stream, and every restart of it (a camera reconnecting,
an RTMP host publishing again) would come from a new port with a new SSRC and new sequence numbers. So ffmpeg
sends to this hop on 127.0.0.1, and the hop sends to the data plane from one socket of its own that lives as
long as the ingest: it introduces itself with the hello (again every `HELLO_INTERVAL_SECONDS`, which the data
plane treats as idempotent and which re-admits it after a data-plane restart), and rewrites SSRC, sequence
numbers and timestamps so the relay sees one continuous stream across ffmpeg restarts. On the way it
measures what arrives: bytes, packets, keyframes and the interval between them.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from services.classroom_relay.dataplane import h264, rtp
from services.classroom_relay.dataplane.admission import build_hello

HELLO_INTERVAL_SECONDS = 2.0
LIVE_WITHIN_SECONDS = 2.0  # a track that sent nothing for this long is not connected
RATE_WINDOW_SECONDS = 2.0
_HEADER = struct.Struct("!BBHII")


@dataclass
class TrackCounters:
    bytes_in: int = 0
    packets_in: int = 0
    keyframes_in: int = 0
    dropped: int = 0  # not RTP: never forwarded
    last_packet_at: float | None = None  # monotonic
    last_keyframe_at: float | None = None
    keyframe_interval_seconds: float | None = None
    generations: int = 0  # distinct upstream SSRCs seen: ffmpeg (re)starts that sent media
    rate_samples: list[tuple[float, int]] = field(default_factory=list)

    def bits_per_second(self, now: float) -> float:
        """Mean rate over the last `RATE_WINDOW_SECONDS`."""
        window = [(at, size) for at, size in self.rate_samples if now - at <= RATE_WINDOW_SECONDS]
        self.rate_samples = window
        return 8 * sum(size for _at, size in window) / RATE_WINDOW_SECONDS


class Continuity:
    """Rewrites (SSRC, sequence, timestamp) of successive upstream streams into one outgoing stream: a new
    upstream SSRC continues one sequence number and the elapsed wall time after the last packet sent."""

    def __init__(self, clock_rate: int, out_ssrc: int | None = None) -> None:
        self.clock_rate = clock_rate
        self.out_ssrc = out_ssrc if out_ssrc is not None else random.getrandbits(32)
        self.in_ssrc: int | None = None
        self.seq_offset = random.getrandbits(16)
        self.ts_offset = random.getrandbits(32)
        self.last_seq: int | None = None
        self.last_ts = 0
        self.last_sent_at = 0.0

    def rewrite(self, packet: bytearray, now: float) -> bool:
        """Rewrite `packet` in place; True when it starts a new upstream stream."""
        _first, _second, seq, ts, ssrc = _HEADER.unpack_from(packet, 0)
        started = ssrc != self.in_ssrc
        if started:
            self.in_ssrc = ssrc
            if self.last_seq is not None:
                gap = max(1, int((now - self.last_sent_at) * self.clock_rate))
                self.seq_offset = (self.last_seq + 1 - seq) & 0xFFFF
                self.ts_offset = (self.last_ts + gap - ts) & 0xFFFFFFFF
        out_seq = (seq + self.seq_offset) & 0xFFFF
        out_ts = (ts + self.ts_offset) & 0xFFFFFFFF
        struct.pack_into("!HII", packet, 2, out_seq, out_ts, self.out_ssrc)
        self.last_seq, self.last_ts, self.last_sent_at = out_seq, out_ts, now
        return started


class TrackHop:
    """Local socket (ffmpeg sends here) → data plane, for one track of one classroom."""

    def __init__(self, track: str, kind: str, clock_rate: int, token: str, relay: tuple[str, int],
                 bind_host: str = "127.0.0.1") -> None:
        self.track, self.kind = track, kind
        self.token, self.relay = token, relay
        self.local = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.local.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.local.bind(("127.0.0.1", 0))
        self.upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.upstream.bind((bind_host, 0))
        self.continuity = Continuity(clock_rate)
        self.counters = TrackCounters()
        self.lock = threading.Lock()
        self._stopped = threading.Event()
        self._last_hello = 0.0
        self._thread = threading.Thread(target=self._run, name=f"hop-{track}", daemon=True)

    @property
    def local_port(self) -> int:
        return self.local.getsockname()[1]

    @property
    def upstream_address(self) -> tuple[str, int]:
        return self.upstream.getsockname()

    def start(self) -> None:
        self._send_hello(time.monotonic())
        self._thread.start()

    def update(self, token: str, relay: tuple[str, int]) -> None:
        """A renewed token or a moved data plane: introduce ourselves again at once."""
        if (token, relay) != (self.token, self.relay):
            self.token, self.relay = token, relay
            self._send_hello(time.monotonic())

    def connected(self, now: float) -> bool:
        last = self.counters.last_packet_at
        return last is not None and now - last <= LIVE_WITHIN_SECONDS

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self.local.close()
        self.upstream.close()

    def _send_hello(self, now: float) -> None:
        self._last_hello = now
        with contextlib.suppress(OSError):  # the data plane's host unreachable for a moment: try again later
            self.upstream.sendto(build_hello(self.token, self.track), self.relay)

    def _run(self) -> None:
        buffer = bytearray(rtp.MAX_DATAGRAM_BYTES + 1)
        header = rtp.RtpHeader()
        while not self._stopped.is_set():
            now = time.monotonic()
            if now - self._last_hello >= HELLO_INTERVAL_SECONDS:
                self._send_hello(now)
            readable, _, _ = select.select([self.local], [], [], 0.2)
            if not readable:
                continue
            try:
                length = self.local.recv_into(buffer)
            except OSError:
                continue
            self._forward(buffer, length, header, time.monotonic())

    def _forward(self, buffer: bytearray, length: int, header: rtp.RtpHeader, now: float) -> None:
        counters = self.counters
        if (length > rtp.MAX_DATAGRAM_BYTES or rtp.looks_like_rtcp(buffer, 0, length)
                or rtp.parse_rtp(buffer, 0, length, header) != rtp.OK):
            counters.dropped += 1  # ffmpeg's own RTCP sender reports stay here: the relay sends its own
            return
        packet = bytearray(buffer[:length])
        with self.lock:
            if self.continuity.rewrite(packet, now):
                counters.generations += 1
            counters.bytes_in += length
            counters.packets_in += 1
            counters.last_packet_at = now
            counters.rate_samples.append((now, length))
            if self.kind == "video" and h264.is_keyframe_start(buffer, header.payload_offset, header.payload_length):
                previous = counters.last_keyframe_at
                # An SPS and the IDR behind it start the same keyframe: count one per 100 ms.
                if previous is None or now - previous > 0.1:
                    counters.keyframes_in += 1
                    if previous is not None:
                        counters.keyframe_interval_seconds = now - previous
                    counters.last_keyframe_at = now
        with contextlib.suppress(OSError):
            self.upstream.sendto(packet, self.relay)

    def snapshot(self, now: float) -> dict:
        with self.lock:
            counters = self.counters
            return {
                "track": self.track, "kind": self.kind, "connected": self.connected(now),
                "bytes_in": counters.bytes_in, "packets_in": counters.packets_in,
                "keyframes_in": counters.keyframes_in, "not_rtp": counters.dropped,
                "bits_per_second": counters.bits_per_second(now),
                "keyframe_interval_seconds": counters.keyframe_interval_seconds,
                "upstream_streams": counters.generations, "ssrc": self.continuity.out_ssrc,
                "source_address": list(self.upstream_address),
            }
