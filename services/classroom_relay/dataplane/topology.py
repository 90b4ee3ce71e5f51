"""Who is connected to what: sessions, their members, tracks and outputs as the control plane wants them.

The control channel (control.py) applies desired state here, under ``Engine.lock``: a session's members
declare the tracks they publish and the outputs they receive (one per (source classroom, track), each an
``Output`` with its own socket from the media port range, registered on the loop's poller); senders are
admitted with their join tokens (admission.py), one address per track. The loop comes here for the two
admission steps of a packet: a hello datagram (``handle_hello``) and the first packet of an unknown SSRC
(``admit_layer``).
"""

from __future__ import annotations

import contextlib
import select
import time
from dataclasses import dataclass

from . import rtp
from .admission import AdmissionTable, address_key, parse_hello
from .ports import PortPool, PortsExhausted
from .rtcp import KeyframeRequestThrottle
from .streams import EngineConfig, Layer, Member, Output, Session, Streams, Track, TrackSpec


class LimitReached(ValueError):
    code = "limit_reached"


@dataclass(frozen=True, slots=True)
class OutputSpec:
    source_classroom: str
    track: str
    port: int


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """One member of a session as the control plane wants it (control.py validates the request)."""

    classroom: str
    tracks: tuple[TrackSpec, ...] = ()
    receive_host: str | None = None
    budget_bytes_per_second: float = 0.0
    outputs: tuple[OutputSpec, ...] = ()


class Topology:
    def __init__(
        self,
        config: EngineConfig,
        streams: Streams,
        admission: AdmissionTable,
        throttle: KeyframeRequestThrottle,
        drops: rtp.DropCounters,
        poller: select.epoll,
        ports: PortPool,
    ) -> None:
        self.config = config
        self.streams = streams
        self.sessions = streams.sessions
        self.layers = streams.layers
        self.admission = admission
        self.throttle = throttle
        self.drops = drops
        self.poller = poller
        self.ports = ports
        self.on_output_added = lambda output: None  # egress.py prepares its send headers

    # ----------------------------------------------------------------- desired state (control thread)
    def set_secrets(self, secrets: list[bytes]) -> None:
        self.admission.set_secrets(secrets)

    def set_session(self, session_id: str, members: list[MemberSpec]) -> tuple[list[Output], list[dict]]:
        """Make ``session_id`` exactly ``members``; returns its outputs and what was refused (and why).

        Idempotent: an unchanged output keeps its socket, SSRC and stream; a changed budget is applied in place.
        """
        found = self.sessions.get(session_id)
        if found is None:
            if len(self.sessions) >= self.config.max_sessions:
                self.drops.counts[rtp.LIMIT_REACHED] += 1
                raise LimitReached(f"at most {self.config.max_sessions} sessions per data plane")
            found = self.sessions[session_id] = Session(session_id)
        refused: list[dict] = []
        if len(members) > self.config.max_members_per_session:
            self.drops.counts[rtp.LIMIT_REACHED] += 1
            refused.append({"session": session_id, "error": "limit_reached",
                            "message": f"at most {self.config.max_members_per_session} members per session"})
            members = members[: self.config.max_members_per_session]
        wanted = {member.classroom: member for member in members}
        for classroom in list(found.members):
            if classroom not in wanted:
                self.remove_member(session_id, classroom)
        # Tracks first (outputs refer to them), then outputs.
        for spec in members:
            member = found.members.get(spec.classroom)
            if member is None:
                member = found.members[spec.classroom] = Member(spec.classroom)
            self._set_tracks(found, member, spec.tracks)
        now = time.monotonic()
        for spec in members:
            refused += self._set_outputs(found, found.members[spec.classroom], spec, now)
        return found.outputs(), refused

    def _set_tracks(self, session: Session, member: Member, tracks: tuple[TrackSpec, ...]) -> None:
        wanted = {track.name: track for track in tracks}
        for name in list(member.tracks):
            if name not in wanted or wanted[name] != member.tracks[name]:
                self._remove_track(session, member.classroom, name)
                del member.tracks[name]
        for name, spec in wanted.items():
            if name not in member.tracks:
                member.tracks[name] = spec
                session.tracks[(member.classroom, name)] = Track(session.session, member.classroom, spec)

    def _remove_track(self, session: Session, classroom: str, name: str) -> None:
        track = session.tracks.pop((classroom, name), None)
        if track is None:
            return
        for output in list(track.outputs):
            receiver = session.members.get(output.classroom)
            if receiver is not None:
                receiver.outputs.pop((classroom, name), None)
            self._drop_output(output)
        self._forget_layers(track)
        self.admission.forget_session(session.session, classroom, name)

    def _forget_layers(self, track: Track) -> None:
        for ssrc in track.layers:
            self.layers.pop(ssrc, None)
            self.throttle.forget(ssrc)

    def _set_outputs(self, session: Session, member: Member, spec: MemberSpec, now: float) -> list[dict]:
        refused: list[dict] = []
        member.receive_host = spec.receive_host
        member.budget = spec.budget_bytes_per_second
        wanted: dict[tuple[str, str], int] = {}
        if spec.receive_host is not None:
            for output_spec in spec.outputs:
                wanted[(output_spec.source_classroom, output_spec.track)] = output_spec.port
        for key in list(member.outputs):
            output = member.outputs[key]
            if key not in wanted or output.destination != (spec.receive_host, wanted[key]):
                del member.outputs[key]
                self._drop_output(output)
        for (source_classroom, track_name), port in wanted.items():
            if (source_classroom, track_name) in member.outputs:
                continue
            track = session.tracks.get((source_classroom, track_name))
            problem = None
            if source_classroom == member.classroom:
                problem = ("bad_request", "a member does not receive its own tracks")
            elif track is None:
                problem = ("not_routed", f"{source_classroom} does not publish a track {track_name!r}")
            elif len(self.streams.all_outputs) >= self.config.max_outputs:
                self.drops.counts[rtp.LIMIT_REACHED] += 1
                problem = ("limit_reached", f"at most {self.config.max_outputs} outputs per data plane")
            if problem is None:
                assert track is not None and spec.receive_host is not None
                try:
                    output = self._add_output(session, member, track, (spec.receive_host, port), now)
                except PortsExhausted as error:
                    self.drops.counts[rtp.PORTS_EXHAUSTED] += 1
                    problem = ("ports_exhausted", str(error))
                else:
                    member.outputs[(source_classroom, track_name)] = output
                    continue
            refused.append({"session": session.session, "classroom": member.classroom,
                            "source_classroom": source_classroom, "track": track_name,
                            "error": problem[0], "message": problem[1]})
        return refused

    def _add_output(
        self, session: Session, member: Member, track: Track, destination: tuple[str, int], now: float
    ) -> Output:
        sock = self.ports.bind_udp(shareable=True)  # Output binds its connected twin to the same port
        # Until the allocator shares the member's budget out, an output may use all of it (a first keyframe).
        output = Output(session.session, member.classroom, track, destination, member.budget or 1.0,
                        self.config, now, sock)
        track.outputs.append(output)
        self.streams.all_outputs.append(output)
        self.streams.outputs_by_ssrc[output.forwarder.out_ssrc] = output
        for fd in {output.fd, output.send_fd}:
            self.streams.outputs_by_fd[fd] = output
            self.poller.register(fd, select.EPOLLIN)
        self.on_output_added(output)
        return output

    def _drop_output(self, output: Output) -> None:
        if output in output.track.outputs:
            output.track.outputs.remove(output)
        if output in self.streams.all_outputs:
            self.streams.all_outputs.remove(output)
        self.streams.outputs_with_queue.discard(output)
        self.streams.outputs_by_ssrc.pop(output.forwarder.out_ssrc, None)
        for fd in {output.fd, output.send_fd}:
            self.streams.outputs_by_fd.pop(fd, None)
            with contextlib.suppress(OSError, ValueError):
                self.poller.unregister(fd)
        if output.connected:
            output.send_sock.close()
        self.ports.release(output.sock)

    def remove_session(self, session_id: str) -> bool:
        found = self.sessions.get(session_id)
        if found is None:
            return False
        for classroom in list(found.members):
            self.remove_member(session_id, classroom)
        del self.sessions[session_id]
        self.admission.forget_session(session_id)
        return True

    def remove_member(self, session_id: str, classroom: str) -> bool:
        found = self.sessions.get(session_id)
        if found is None or classroom not in found.members:
            return False
        member = found.members.pop(classroom)
        for output in member.outputs.values():
            self._drop_output(output)
        for name in list(member.tracks):
            self._remove_track(found, classroom, name)
        self.admission.forget_session(session_id, classroom)
        return True

    def register_sender(
        self, session: str, classroom: str, track: str, token: str, address: tuple[str, int]
    ) -> int:
        """An explicit registration by the control plane: hands the track over to ``address`` at once."""
        key = address_key(str(address[0]), int(address[1]))
        reason, sender = self.admission.admit(key, token, track, self.publishes, self.silent_for, explicit=True)
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

    def publishes(self, session: str, classroom: str, track: str) -> bool:
        found = self.sessions.get(session)
        return found is not None and found.publishes(classroom, track)

    def silent_for(self, key: int) -> float:
        """Seconds since the sender at ``key`` last delivered a packet (since it was pinned if never)."""
        sender = self.admission.senders.get(key)
        if sender is None:
            return float("inf")
        last = max((self.layers[ssrc].last_packet_time for ssrc in sender.ssrcs if ssrc in self.layers),
                   default=sender.pinned_at)
        return time.monotonic() - max(last, sender.pinned_at)

    def handle_hello(self, data: bytearray, offset: int, size: int, key: int) -> bool:
        hello = parse_hello(data, offset, size)
        if hello is None:
            return False
        token, track = hello
        reason, _sender = self.admission.admit(key, token, track, self.publishes, self.silent_for)
        if reason:
            self.drops.counts[reason] += 1
        return True

    def admit_layer(self, key: int, ssrc: int) -> Layer | None:
        reason, sender = self.admission.check_ssrc(key, ssrc)
        if sender is None:
            self.drops.counts[reason] += 1
            return None
        session = self.sessions.get(sender.session)
        track = session.tracks.get((sender.classroom, sender.track)) if session is not None else None
        if track is None:
            self.drops.counts[rtp.NOT_ROUTED] += 1
            return None
        existing = self.layers.get(ssrc)
        if existing is not None:  # the same SSRC now legitimately comes from a re-admitted address
            existing.track.layers.pop(ssrc, None)
        layer = Layer(ssrc, key, track)
        layer.first_packet_time = time.monotonic()
        early = sender.early_reports.pop(ssrc, None)
        if early is not None:
            layer.last_sender_report_middle, layer.sender_report_timestamp, layer.last_sender_report_time = early
        track.layers[ssrc] = layer
        self.layers[ssrc] = layer
        return layer
