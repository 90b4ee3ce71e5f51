"""The control plane's link to the recorders (one beside each data plane that has one, RELAY_RECORDERS;
docs/recording.md), driven by that data plane's channel thread (dataplane_client.py):

- `prepare` before each data-plane push: the recordings are reconciled with the live sessions there
  (recordings.reconcile: rows, port blocks, `recording.started` / `recording.ended`), so the push that
  follows already carries the recorder member;
- `push_for` after it: the recorder's `set_state {recordings: [...]}` with each recording's SDP;
- `poll` with each read of the data plane's stats: `get_stats` folded into the rows; a `finished` recording
  becomes available (`recording.available`, committed) and is then `forget`-ten on the recorder.

Connections are sidecar_link.py's. A failure is logged and counted, never raised into the data plane's
channel: the next push or poll tries again.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from services.classroom_relay import recordings, settings
from services.classroom_relay.sidecar_link import SidecarClients, parse_named

log = logging.getLogger(__name__)


def recorder_of(dataplane: str, hello: dict[str, Any] | None) -> recordings.Recorder | None:
    """What a recorder's `hello` advertises, checked: its media host (resolved to IPv4: the data plane sends
    to addresses) and port range; None (logged) for anything unusable."""
    if not isinstance(hello, dict):
        return None
    host, ports = hello.get("media_host"), hello.get("media_ports")
    try:
        if not isinstance(host, str) or not host:
            raise ValueError(f"media_host {host!r}")
        if (not isinstance(ports, list) or len(ports) != 2 or not all(isinstance(p, int) for p in ports)
                or not 0 < ports[0] <= ports[1] < 65536):
            raise ValueError(f"media_ports {ports!r}")
        address = ipaddress.IPv4Address(socket.gethostbyname(host))
        if address.is_unspecified:
            raise ValueError(f"media_host {host} is not an address the data plane can send to")
    except (OSError, ValueError) as error:
        log.warning("recorder beside data plane %s advertises no usable media address: %s", dataplane, error)
        return None
    return recordings.Recorder(dataplane, str(address), (ports[0], ports[1]))


class RecorderLink:
    def __init__(self, addresses: dict[str, str], secret: Callable[[], str | None],
                 engine: Engine | None = None) -> None:
        self.sidecars = SidecarClients(addresses, secret, "recorder")
        self.engine = engine
        self.errors = 0  # failures on our side (database), besides the sidecars' own

    @classmethod
    def from_config(cls, config: dict, engine: Engine, secret: Callable[[], str | None]) -> RecorderLink:
        return cls(parse_named(settings.RECORDERS.get(config), "RELAY_RECORDERS"), secret, engine)

    @property
    def failures(self) -> int:
        return self.sidecars.failures + self.errors

    def wanted(self, dataplane: str) -> bool:
        return self.sidecars.wanted(dataplane) and self.engine is not None

    def prepare(self, dataplane: str) -> None:
        """Start and end recordings so they match the live sessions on `dataplane` (before its push)."""
        if not self.wanted(dataplane):
            return
        recorder = recorder_of(dataplane, self.sidecars.hello(dataplane))
        if recorder is None:
            return
        try:
            with Session(self.engine) as db, db.begin():
                recordings.reconcile(db, recorder)
        except SQLAlchemyError as error:  # e.g. another control-plane replica started it first
            self.errors += 1
            log.warning("recordings beside data plane %s not reconciled: %s", dataplane, error)

    def push_for(self, dataplane: str, media_address: list | None,
                 confirmed: dict[tuple[str, str, str, str], dict] | None = None) -> dict[str, Any] | None:
        """The recorder's desired state after the data plane's push; `media_address` is the data plane's
        (where media comes from), `confirmed` its outputs by key (dataplane_state.outputs_by_key)."""
        if not self.wanted(dataplane):
            return None
        relay_host = str(media_address[0]) if media_address else "127.0.0.1"
        try:
            ipaddress.ip_address(relay_host)
        except ValueError:
            relay_host = "127.0.0.1"
        if relay_host == "0.0.0.0":  # bound to every address: the recorder beside it reaches it on loopback
            relay_host = "127.0.0.1"
        try:
            with Session(self.engine) as db:
                state = recordings.recorder_state(db, dataplane, relay_host, confirmed)
        except SQLAlchemyError as error:
            self.errors += 1
            log.warning("recorder state for data plane %s not read: %s", dataplane, error)
            return None
        reply = self.sidecars.call(dataplane, "set_state", **state)
        refused = (reply or {}).get("refused") or []
        for entry in refused:
            log.warning("recorder beside data plane %s refused %s", dataplane, entry)
        if refused:
            try:
                with Session(self.engine) as db, db.begin():
                    recordings.mark_refused(db, dataplane, refused)
            except SQLAlchemyError as error:
                self.errors += 1
                log.warning("recorder refusals of data plane %s not recorded: %s", dataplane, error)
        return reply

    def poll(self, dataplane: str) -> list[str]:
        """Read the recorder's stats into the recordings; returns the keys made final and forgotten."""
        if not self.wanted(dataplane):
            return []
        reply = self.sidecars.call(dataplane, "get_stats")
        if not reply or not reply.get("ok"):
            return []
        stats = reply["stats"] if isinstance(reply.get("stats"), dict) else reply
        try:
            with Session(self.engine) as db, db.begin():
                forget = recordings.apply_stats(db, dataplane, stats)
        except SQLAlchemyError as error:
            self.errors += 1
            log.warning("recorder stats of data plane %s not recorded: %s", dataplane, error)
            return []
        if forget:
            self.sidecars.call(dataplane, "forget", keys=forget)  # committed first: a lost reply repeats it
        return forget

    def close(self, dataplane: str | None = None) -> None:
        self.sidecars.close(dataplane)
