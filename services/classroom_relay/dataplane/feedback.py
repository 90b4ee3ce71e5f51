"""RTCP in and out: reports, NACKs and keyframe requests (PLI/FIR), RFC 3550 / RFC 4585.

In: receivers report on their output (loss, jitter, round trip), ask for lost packets (answered from the
packet ring, which doubles as the retransmission cache: buffer.py) and ask for keyframes (passed on to
the sender of the layer they follow, throttled). Senders send sender reports, kept for our receiver
reports. RTCP arrives on the relay's RTCP port, on each output's own socket, or mixed into the media
port (ingest.py passes it here).
Out: sender reports per output and receiver reports per incoming layer, once a second (engine.py's
timer); keyframe requests when a receiver asks or when an output is to switch layers.
"""

from __future__ import annotations

import contextlib
import socket

from . import rtp
from .admission import AdmissionTable, PinnedSender, address_key, key_address, rtp_companion_key
from .buffer import PacketRing
from .egress import Egress
from .rtcp import (
    KeyframeRequest,
    KeyframeRequestThrottle,
    Nack,
    ReportBlock,
    RtcpItem,
    SenderReport,
    build_pli,
    build_receiver_report,
    build_sdes_cname,
    build_sender_report,
    ntp_middle_32,
    ntp_now,
    parse_compound,
    round_trip_seconds,
)
from .streams import ADDRESS_IP_MASK, RTCP_PORT_STEP, Output, Streams, Track
from .topology import Topology


class Feedback:
    def __init__(
        self,
        ring: PacketRing,
        rtcp_socket: socket.socket,
        relay_ssrc: int,
        streams: Streams,
        admission: AdmissionTable,
        throttle: KeyframeRequestThrottle,
        drops: rtp.DropCounters,
        topology: Topology,
        egress: Egress,
    ) -> None:
        self.ring = ring
        self.rtcp_socket = rtcp_socket
        self.rtcp_buffer = bytearray(rtp.MAX_DATAGRAM_BYTES)
        self.header = rtp.RtpHeader()
        self.relay_ssrc = relay_ssrc
        self.layers = streams.layers
        self.outputs_by_ssrc = streams.outputs_by_ssrc
        self.all_outputs = streams.all_outputs
        self.admission = admission
        self.throttle = throttle
        self.drops = drops
        self.topology = topology
        self.egress = egress
        self.keyframe_requests_forwarded = 0

    def drain_rtcp(self, sock: socket.socket, now: float, output: Output | None) -> None:
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
            if output is not None and not output.accepts_rtcp_from(key):
                # Only the receiver's RTP port, port + 1 or rtcp-mux: anything else on this socket is refused.
                output.rtcp_refused += 1
                same_host = (key & ADDRESS_IP_MASK) == output.destination_ip
                self.drops.counts[rtp.RTCP_WRONG_PORT if same_host else rtp.RTCP_UNKNOWN_SOURCE] += 1
                continue
            if size >= 2 and 192 <= buffer[1] <= 223:
                self.handle_rtcp(buffer, 0, size, key, now, output)
            else:
                parse_result = rtp.parse_rtp(buffer, 0, size, self.header)
                if parse_result == rtp.BAD_VERSION and self.topology.handle_hello(buffer, 0, size, key):
                    continue
                self.drops.counts[rtp.BAD_RTCP if parse_result == rtp.OK else parse_result] += 1

    def handle_rtcp(
        self, buffer: bytearray, offset: int, size: int, key: int, now: float, output: Output | None
    ) -> None:
        items = parse_compound(buffer, offset, size)
        if items is None:
            self.drops.counts[rtp.BAD_RTCP] += 1
            return
        sender = self.admission.senders.get(key) or self.admission.senders.get(rtp_companion_key(key))
        if sender is not None:
            self._handle_sender_rtcp(sender, key, items, now)
            return
        source_ip = key & ADDRESS_IP_MASK
        accepted = False
        wrong_port = False
        middle_now = ntp_middle_32(*ntp_now())
        for item in items:
            target = self._feedback_output(item)
            if target is None or target.destination_ip != source_ip or (output is not None and target is not output):
                continue
            if not target.accepts_rtcp_from(key):
                wrong_port = True  # the receiver's host, another port: not its RTCP
                continue
            accepted = True
            target.rtcp_key = key
            if isinstance(item, ReportBlock):
                target.loss_ratio = item.fraction_lost
                target.jitter_seconds = item.jitter_timestamp_units / target.track.clock_rate
                rtt = round_trip_seconds(item, middle_now)
                if rtt is not None:
                    target.rtt_seconds = rtt
            elif isinstance(item, Nack):
                self.answer_nack(target, item)
            elif isinstance(item, KeyframeRequest) and not target.track.is_audio:
                target.plis_received += 1
                self.request_keyframe(target.track, target.forwarder.layer_ssrc, now)
        if not accepted:
            if output is not None:
                output.rtcp_refused += 1
            self.drops.counts[rtp.RTCP_WRONG_PORT if wrong_port else rtp.UNKNOWN_SOURCE] += 1

    def _feedback_output(self, item: RtcpItem) -> Output | None:
        if isinstance(item, ReportBlock):
            return self.outputs_by_ssrc.get(item.source_ssrc)
        if isinstance(item, Nack | KeyframeRequest):
            return self.outputs_by_ssrc.get(item.media_ssrc)
        return None

    def _handle_sender_rtcp(self, sender: PinnedSender, key: int, items: list[RtcpItem], now: float) -> None:
        for item in items:
            if isinstance(item, SenderReport) and item.sender_ssrc not in sender.ssrcs:
                # ffmpeg sends its first report just before its first packet: keep it for that SSRC's layer.
                if len(sender.early_reports) < 4:
                    sender.early_reports[item.sender_ssrc] = (item.ntp_middle_32, item.rtp_timestamp, now)
                sender.rtcp_key = key
            if isinstance(item, SenderReport) and item.sender_ssrc in sender.ssrcs:
                layer = self.layers.get(item.sender_ssrc)
                if layer is not None:
                    layer.last_sender_report_middle = item.ntp_middle_32
                    layer.last_sender_report_time = now
                    layer.sender_report_timestamp = item.rtp_timestamp
                    sender.rtcp_key = key  # where its RTCP comes from is where ours goes

    def answer_nack(self, output: Output, nack: Nack) -> None:
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
            self.egress.send(output, ring.view[offset : offset + size])
            output.retransmissions += 1
            output.bytes_out += size
            output.packets_out += 1

    def request_keyframe(self, track: Track, layer_ssrc: int, now: float) -> None:
        layer = track.layers.get(layer_ssrc)
        if layer is None or track.is_audio or not self.throttle.allow(layer_ssrc, now):
            return
        sender = self.admission.senders.get(layer.sender_key)
        rtcp_key = sender.rtcp_key if sender is not None else 0
        # Until the sender's own RTCP shows where it listens, RTP port + 1 (RFC 3550 §11; ffmpeg and rtpbin).
        destination = key_address(rtcp_key or layer.sender_key + RTCP_PORT_STEP)
        try:
            self.rtcp_socket.sendto(build_pli(self.relay_ssrc, layer_ssrc), destination)
        except OSError:
            return
        track.keyframe_requests_sent += 1
        self.keyframe_requests_forwarded += 1

    @staticmethod
    def sender_report(output: Output, ntp_seconds: int, ntp_fraction: int, now: float) -> bytes | None:
        """The output's sender report, carrying its sender's RTP↔NTP mapping through our rewriting.

        The followed layer's last sender report said "RTP time R is NTP time N" (the sender's clock);
        extrapolated to our NTP time now in the track's clock and shifted by this output's timestamp offset, it
        tells the receiver which of *our* timestamps is now, so audio and video of one classroom line up (lip
        sync) whatever layer is followed. The sender's NTP is used, not the report's arrival time: encoders
        (ffmpeg) send reports tens of milliseconds after the instant they describe, differently per stream;
        an offset between the sender's clock and ours is the same for all its tracks. Without a sender
        report from the source there is no honest mapping: nothing is sent. The SDES CNAME is the source
        classroom, one name for all its tracks: receivers that sync by CNAME (GStreamer's rtpbin) need it.
        """
        forwarder = output.forwarder
        layer = output.track.layers.get(forwarder.layer_ssrc)
        if layer is None or not layer.last_sender_report_time:
            return None
        elapsed_ticks = int(((ntp_middle_32(ntp_seconds, ntp_fraction) - layer.last_sender_report_middle) & 0xFFFFFFFF)
                            / 65536 * forwarder.clock_rate)
        rtp_timestamp = layer.sender_report_timestamp + forwarder.timestamp_offset + elapsed_ticks
        return build_sender_report(
            forwarder.out_ssrc, ntp_seconds, ntp_fraction, rtp_timestamp, output.packets_out, output.bytes_out
        ) + build_sdes_cname(forwarder.out_ssrc, output.track.classroom)

    def report_before_first_packet(self, output: Output, now: float) -> None:
        """A sender report just before an output's first packet, as encoders do (its mapping is known once
        the output follows a layer)."""
        report = self.sender_report(output, *ntp_now(), now)
        if report is not None:
            try:
                output.sock.sendto(report, output.rtcp_destination())
            except OSError:
                output.send_errors += 1

    def send_reports(self, now: float) -> None:
        seconds, fraction = ntp_now()
        for output in self.all_outputs:
            report = self.sender_report(output, seconds, fraction, now) if output.packets_out else None
            if report is None:
                continue
            try:
                output.sock.sendto(report, output.rtcp_destination())
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
                    build_receiver_report(self.relay_ssrc, (block,)),
                    key_address(rtcp_key or layer.sender_key + RTCP_PORT_STEP),
                )
