"""Who is connected to what: sessions, branches and senders as the control plane wants them.

The control channel (control.py) applies desired state here, under ``Engine.lock``: sessions and their
branches become ``Output``s (with sockets registered on the loop's poller), senders are admitted with
their join tokens (admission.py). The loop comes here for the two admission steps of a packet: a hello
datagram (``handle_hello``) and the first packet of an unknown SSRC (``admit_layer``).
"""

from __future__ import annotations

import contextlib
import select
import time

from . import rtp
from .admission import AdmissionTable, address_key, parse_hello
from .rtcp import KeyframeRequestThrottle
from .streams import EngineConfig, Layer, Output, Session, Streams, Track


class Topology:
    def __init__(
        self,
        config: EngineConfig,
        streams: Streams,
        admission: AdmissionTable,
        throttle: KeyframeRequestThrottle,
        drops: rtp.DropCounters,
        poller: select.epoll,
    ) -> None:
        self.config = config
        self.streams = streams
        self.sessions = streams.sessions
        self.layers = streams.layers
        self.admission = admission
        self.throttle = throttle
        self.drops = drops
        self.poller = poller

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
        self.streams.all_outputs.append(output)
        self.streams.outputs_by_fd[output.fd] = output
        self.streams.outputs_by_ssrc[output.forwarder.out_ssrc] = output
        self.poller.register(output.fd, select.EPOLLIN)
        return output

    def _drop_output(self, output: Output) -> None:
        if output in output.track.outputs:
            output.track.outputs.remove(output)
        if output in self.streams.all_outputs:
            self.streams.all_outputs.remove(output)
        self.streams.outputs_with_queue.discard(output)
        self.streams.outputs_by_fd.pop(output.fd, None)
        self.streams.outputs_by_ssrc.pop(output.forwarder.out_ssrc, None)
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
        reason, sender = self.admission.admit(key, token, self.is_member)
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

    def is_member(self, session: str, classroom: str) -> bool:
        found = self.sessions.get(session)
        return found is not None and found.is_member(classroom)

    def handle_hello(self, data: bytearray, offset: int, size: int, key: int) -> bool:
        token = parse_hello(data, offset, size)
        if token is None:
            return False
        reason, _sender = self.admission.admit(key, token, self.is_member)
        if reason:
            self.drops.counts[reason] += 1
        return True

    def admit_layer(self, key: int, ssrc: int) -> Layer | None:
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
