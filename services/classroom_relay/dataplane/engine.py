"""The forwarding loop and its timers: the one place that ties the data plane's parts together.

One thread blocks on epoll and then works per wake-up, holding ``Engine.lock`` (never while it waits):
media batches go to ingest.py (receive, classify, account) and from there to egress.py (rewrite, pace,
send); RTCP on the relay's RTCP port or on an output's socket goes to feedback.py; the pacer's queues are
drained by egress.py. Timers run every 100 ms: rate samples, layer choice per output, freeze detection,
and the RTCP reports once a second.

The control channel (control.py) and the metrics exporter (metrics.py) run in other threads; they take
``Engine.lock`` and change desired state through topology.py or read stats.py's snapshot. docs/relay-dataplane.md
follows one packet through these files.
"""

from __future__ import annotations

import gc
import os
import select
import socket
import threading
import time
from dataclasses import replace

from . import rtp
from .admission import AdmissionTable
from .allocator import NO_TARGET, allocate_member
from .buffer import PacketRing
from .egress import Egress
from .feedback import Feedback
from .ingest import Ingest
from .ports import PortPool
from .rtcp import KeyframeRequestThrottle
from .stats import snapshot
from .streams import SEND_BUFFER_BYTES, EngineConfig, Layer, Member, Output, Session, Streams
from .topology import MemberSpec, Topology
from .udpbatch import RingGather, RingReceiver, gso_available, sendmmsg_available

__all__ = ["Engine", "EngineConfig"]

TICK_SECONDS = 0.1
RATE_SAMPLE_SECONDS = 0.5
REPORT_SECONDS = 1.0
FREEZE_SECONDS = 1.0  # no media forwarded for longer than this while the source is live = a freeze
RECEIVE_BUFFER_BYTES = 1 << 20  # ≈ 20 ms at full rate: overload becomes loss, not latency


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.instance = os.urandom(8).hex()
        self.started_wall = time.time()
        self.lock = threading.Lock()
        self.running = False
        self.gso_enabled = config.use_gso and gso_available()
        self.config = config = replace(config, use_gso=self.gso_enabled)
        self.ring = PacketRing(config.ring_slots)
        self.drops = rtp.DropCounters()
        self.admission = AdmissionTable()
        self.throttle = KeyframeRequestThrottle()
        self.streams = streams = Streams()

        self.ports = PortPool(config.media_host, config.media_ports)
        media_port = config.media_port
        if config.media_ports is not None and not self.ports.contains(media_port):
            media_port = config.media_ports[0]  # with a range, every socket is inside it
        self.media_socket = self._bind_udp(media_port)
        fixed_media_port = media_port != 0
        media_port = self.media_socket.getsockname()[1]
        rtcp_port = config.rtcp_port or (media_port + 1 if fixed_media_port else 0)
        self.rtcp_socket = self._bind_udp(rtcp_port)
        self.poller = select.epoll()
        self.poller.register(self.media_socket.fileno(), select.EPOLLIN)
        self.poller.register(self.rtcp_socket.fileno(), select.EPOLLIN)

        self.topology = Topology(config, streams, self.admission, self.throttle, self.drops, self.poller, self.ports)
        # Outputs send whole runs straight from the ring; without sendmmsg they go packet by packet.
        gather = RingGather(self.ring, config.batch) if sendmmsg_available() else None
        self.egress = Egress(self.ring, gather, self.gso_enabled, streams, self.drops)
        self.feedback = Feedback(
            self.ring, self.rtcp_socket, int.from_bytes(os.urandom(4), "big"), streams, self.admission,
            self.throttle, self.drops, self.topology, self.egress,
        )
        receiver = RingReceiver(self.media_socket, self.ring, config.batch)
        self.ingest = Ingest(self.ring, receiver, streams, self.drops, self.topology, self.feedback, self.egress)
        self.topology.on_output_added = self._output_added
        self.egress.before_first_packet = self.feedback.report_before_first_packet
        now = time.monotonic()
        self.last_media_wake = self.previous_media_wake = 0.0
        self.next_tick = now
        self.next_rate_sample = now
        self.next_report = now + REPORT_SECONDS

    # ----------------------------------------------------------------- sockets and tables
    def _bind_udp(self, port: int) -> socket.socket:
        sock = self.ports.bind_udp(port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        sock.setblocking(False)
        return sock

    def _output_added(self, output: Output) -> None:
        self.egress.prepare_output(output)
        # A late joiner must not wait for the encoder's next scheduled keyframe: ask for one at once
        # (encoders that honour PLI answer within a frame or two; see docs/relay-dataplane.md for the others).
        if not output.track.is_audio:
            now = time.monotonic()
            for ssrc in list(output.track.layers):
                self.feedback.request_keyframe(output.track, ssrc, now)

    @property
    def media_address(self) -> tuple[str, int]:
        return self.media_socket.getsockname()

    @property
    def rtcp_address(self) -> tuple[str, int]:
        return self.rtcp_socket.getsockname()

    @property
    def sessions(self) -> dict[str, Session]:
        return self.streams.sessions

    @property
    def layers(self) -> dict[int, Layer]:
        return self.streams.layers

    @property
    def all_outputs(self) -> list[Output]:
        return self.streams.all_outputs

    # ----------------------------------------------------------------- the loop
    def prepare_loop(self) -> None:
        """Before the loop: what exists now (modules, tables, the ring's lists) is never garbage, so the
        collector stops walking it (gc.freeze); the loop's short-lived tuples and lists then trigger only
        cheap young-generation collections instead of full ones over everything."""
        gc.collect()
        gc.freeze()

    def run(self) -> None:
        self.prepare_loop()
        self.running = True
        while self.running:
            self.run_once()

    def stop(self) -> None:
        self.running = False

    def run_once(self, max_wait: float = 0.05) -> None:
        now = time.monotonic()
        wait = min(max_wait, max(0.0, self.next_tick - now))
        outputs_with_queue = self.streams.outputs_with_queue
        if outputs_with_queue:
            wait = min(wait, 0.001)
        events = self._poll(now, wait)
        with self.lock:
            now = time.monotonic()
            media_fd = self.ingest.media_receiver.fd
            for fd, _mask in events:
                if fd == media_fd:
                    self.previous_media_wake, self.last_media_wake = self.last_media_wake, now
                    self.ingest.drain_media(now)
                elif fd == self.rtcp_socket.fileno():
                    self.feedback.drain_rtcp(self.rtcp_socket, now, None)
                else:
                    output = self.streams.outputs_by_fd.get(fd)
                    if output is not None:  # on its unconnected socket or on the connected twin
                        output.bucket.refill(now)  # NACK answers take tokens too
                        self.feedback.drain_rtcp(output.send_sock if fd == output.send_fd else output.sock, now, output)
            if outputs_with_queue:
                self.egress.drain_queues(now)
            if now >= self.next_tick:
                self._tick(now)

    def _poll(self, now: float, wait: float) -> list[tuple[int, int]]:
        """epoll; but while media arrives faster than ``busy_poll_seconds`` apart, poll without sleeping for up
        to that long after the last arrival: waking a sleeping thread costs ~30 µs (p99 ~100 µs) on this
        kind of VM (`make bench-relay`, "where the time goes"), more than the gap between packets. At the
        rates classrooms send (a few hundred packets/s per stream) the gaps are longer and the loop sleeps.
        Off unless configured (``EngineConfig.busy_poll_seconds``, ``--busy-poll-us``)."""
        spin = self.config.busy_poll_seconds
        if spin > 0 and wait > 0 and self.last_media_wake - self.previous_media_wake < spin:
            start = now
            spin_until = min(self.last_media_wake + spin, now + wait)
            poll = self.poller.poll
            while now < spin_until:
                events = poll(0)
                if events:
                    return events
                now = time.monotonic()
            wait = max(0.0, wait - (now - start))
        return self.poller.poll(wait)

    # ----------------------------------------------------------------- timers
    def _tick(self, now: float) -> None:
        self.next_tick = now + TICK_SECONDS
        if now >= self.next_rate_sample:
            self.next_rate_sample = now + RATE_SAMPLE_SECONDS
            for layer in self.streams.layers.values():
                layer.rate.sample(now, layer.bytes_in)
            for output in self.streams.all_outputs:
                output.send_rate.sample(now, output.bytes_out)
            for found in self.streams.sessions.values():
                for member in found.members.values():
                    self._allocate(member, now)
        else:
            for found in self.streams.sessions.values():
                for member in found.members.values():
                    # A new output or a new source: do not wait for the meter.
                    if any(output.target_ssrc == NO_TARGET for output in member.outputs.values()):
                        self._allocate(member, now)
        for output in self.streams.all_outputs:
            if output.bytes_out and not output.frozen and now - output.last_media_time > FREEZE_SECONDS:
                output.frozen = True
                output.freezes += 1
            elif output.frozen and now - output.last_media_time <= FREEZE_SECONDS:
                output.frozen = False
        if now >= self.next_report:
            self.next_report = now + REPORT_SECONDS
            self.feedback.send_reports(now)

    def _allocate(self, member: Member, now: float) -> None:
        outputs = list(member.outputs.values())
        if not outputs:
            return
        member.audio_bytes_per_second, member.video_bytes_per_second = allocate_member(outputs, member.budget, now)
        for output in outputs:
            target = output.target_ssrc
            if not output.track.is_audio and target != NO_TARGET and target != output.forwarder.layer_ssrc:
                self.feedback.request_keyframe(output.track, target, now)

    # ----------------------------------------------------------------- desired state (control thread)
    def set_secrets(self, secrets: list[bytes]) -> None:
        self.topology.set_secrets(secrets)

    def set_session(self, session: str, members: list[MemberSpec]) -> tuple[list[Output], list[dict]]:
        return self.topology.set_session(session, members)

    def remove_session(self, session: str) -> bool:
        return self.topology.remove_session(session)

    def register_sender(self, session: str, classroom: str, track: str, token: str, address: tuple[str, int]) -> int:
        return self.topology.register_sender(session, classroom, track, token, address)

    def unregister_sender(self, address: tuple[str, int]) -> bool:
        return self.topology.unregister_sender(address)

    # ----------------------------------------------------------------- stats (control and metrics threads)
    def snapshot(self) -> dict:
        return snapshot(self)

    def snapshot_locked(self) -> dict:
        with self.lock:
            return self.snapshot()

    def close(self) -> None:
        self.running = False
        with self.lock:
            for found in list(self.streams.sessions):
                self.remove_session(found)
            self.poller.close()
            self.ports.release(self.media_socket)
            self.ports.release(self.rtcp_socket)
