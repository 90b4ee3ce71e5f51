"""Which data plane forwards a session: the fleet from the configuration, and the placement rule.

Configuration (nameko config first, then the environment):

- RELAY_DATAPLANES: `name=address,…` with address `host:port` or `unix:/path`, e.g.
  `relay-0=relay-dataplane-0.relay-dataplane:7070,relay-1=relay-dataplane-1.relay-dataplane:7070`.
  Without it, RELAY_CONTROL_ADDRESS (default 127.0.0.1:7070) is the one data plane `default`.
- RELAY_DATAPLANE_PUBLIC_HOSTS: `name=IPv4,…`, the address classrooms reach a data plane's media
  ports at when it differs from the one it binds (0.0.0.0 in a pod behind a LoadBalancer).
- RELAY_DATAPLANE_CAPACITY_BPS: what one data plane forwards (default 1 Gbit/s); placement compares
  the budget each has left.

The rule, when a session starts: a master school's live sessions all go to one data plane, so its
link is forwarded (and paced) in one place; otherwise the reachable data plane with the most free
committed budget takes it. The placement is stored on the session (column `dataplane`) until it ends.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.classroom_relay import settings, tracks
from services.classroom_relay.exceptions import DataPlaneUnavailable
from services.classroom_relay.models import Classroom, LiveSession, Recording, SessionClassroom

DEFAULT_DATAPLANE = "default"
DEFAULT_CONTROL_ADDRESS = settings.CONTROL_ADDRESS.default
DEFAULT_DATAPLANE_CAPACITY_BPS = settings.DATAPLANE_CAPACITY_BPS.default


@dataclass(frozen=True)
class DataPlaneSpec:
    """One configured data plane: its name (stored on sessions), control address and public media host."""

    name: str
    address: str
    capacity_bps: int = DEFAULT_DATAPLANE_CAPACITY_BPS
    public_host: str | None = None

    def client_arguments(self) -> dict[str, Any]:
        return parse_control_address(self.address)


@dataclass(frozen=True)
class Fleet:
    """The configured data planes and which of them answer right now (as seen by this service)."""

    dataplanes: tuple[DataPlaneSpec, ...]
    reachable: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def single(cls, name: str = DEFAULT_DATAPLANE) -> Fleet:
        """One reachable data plane: for unit tests and tools that do not talk to a real one."""
        return cls((DataPlaneSpec(name, DEFAULT_CONTROL_ADDRESS),), frozenset({name}))

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.dataplanes]


def parse_control_address(text: str) -> dict[str, Any]:
    """`host:port` or `unix:/path` → ControlClient keyword arguments."""
    if text.startswith("unix:") and len(text) > len("unix:"):
        return {"unix_path": text[len("unix:") :]}
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a data plane's control address is host:port or unix:/path, not {text!r}")
    return {"host": host, "port": int(port)}


def _pairs(text: str, variable: str) -> list[tuple[str, str]]:
    pairs = []
    for part in text.split(","):
        if not part.strip():
            continue
        name, separator, value = part.strip().partition("=")
        if not separator or not name.strip() or not value.strip():
            raise ValueError(f"{variable} entries are name=value, not {part.strip()!r}")
        pairs.append((name.strip(), value.strip()))
    return pairs


def parse_dataplanes(
    text: str | None,
    fallback_address: str | None = None,
    public_hosts: str | None = None,
    capacity_bps: int = DEFAULT_DATAPLANE_CAPACITY_BPS,
) -> tuple[DataPlaneSpec, ...]:
    """RELAY_DATAPLANES (or the single RELAY_CONTROL_ADDRESS as `default`) → specs; raises ValueError."""
    entries = _pairs(text, "RELAY_DATAPLANES") if text and text.strip() else [
        (DEFAULT_DATAPLANE, fallback_address or DEFAULT_CONTROL_ADDRESS)
    ]
    names = [name for name, _address in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"RELAY_DATAPLANES names a data plane twice: {names}")
    hosts = dict(_pairs(public_hosts, "RELAY_DATAPLANE_PUBLIC_HOSTS")) if public_hosts else {}
    unknown = set(hosts) - set(names)
    if unknown:
        raise ValueError(f"RELAY_DATAPLANE_PUBLIC_HOSTS names unknown data planes: {sorted(unknown)}")
    for host in hosts.values():
        ipaddress.IPv4Address(host)  # SDPs and join tokens carry it as an IPv4 address
    specs = []
    for name, address in entries:
        parse_control_address(address)  # fail at start-up, not on the first connection
        specs.append(DataPlaneSpec(name, address, capacity_bps, hosts.get(name)))
    return tuple(specs)


def dataplanes_from(config: Mapping[str, Any] | None = None) -> tuple[DataPlaneSpec, ...]:
    """The fleet's specs from nameko config, then the environment (see the module docstring)."""
    return parse_dataplanes(
        settings.DATAPLANES.get(config), settings.CONTROL_ADDRESS.get(config),
        settings.DATAPLANE_PUBLIC_HOSTS.get(config), settings.DATAPLANE_CAPACITY_BPS.get(config),
    )


# --- the placement rule ----------------------------------------------------------------------------------


def _member_bps(member: SessionClassroom) -> int:
    return member.source_bps + member.downlink_bps + member.return_bps


def committed_by_dataplane(session: Session) -> dict[str, int]:
    """Bandwidth committed to the live sessions placed on each data plane (everything it forwards)."""
    query = (
        select(LiveSession.dataplane, SessionClassroom)
        .join(SessionClassroom, SessionClassroom.session_id == LiveSession.id)
        .where(LiveSession.status == "live", LiveSession.dataplane.is_not(None), SessionClassroom.state == "joined")
    )
    totals: dict[str, int] = defaultdict(int)
    for dataplane, member in session.execute(query):
        totals[dataplane] += _member_bps(member)
    # The recorder beside a data plane is its own egress (recordings.py): the best layer of each master track.
    recorded = (select(LiveSession.dataplane, SessionClassroom.tracks)
                .join(Recording, Recording.session_id == LiveSession.id)
                .join(SessionClassroom, (SessionClassroom.session_id == LiveSession.id)
                      & (SessionClassroom.role == "master"))
                .where(LiveSession.status == "live", LiveSession.dataplane.is_not(None),
                       Recording.state == "recording"))
    for dataplane, published in session.execute(recorded):
        totals[dataplane] += tracks.full_receive_bps(published or [])
    return dict(totals)


def school_dataplane(session: Session, school_id: int, excluding_session: int) -> tuple[str, int] | None:
    """(data plane, session id) of a live session taught from `school_id`, if there is one."""
    found = session.execute(
        select(LiveSession.dataplane, LiveSession.id)
        .join(Classroom, Classroom.id == LiveSession.master_classroom_id)
        .where(
            LiveSession.status == "live",
            LiveSession.dataplane.is_not(None),
            LiveSession.id != excluding_session,
            Classroom.school_id == school_id,
        )
        .order_by(LiveSession.id)
        .limit(1)
    ).first()
    return (found[0], found[1]) if found else None


def choose_dataplane(session: Session, live: LiveSession, school_id: int, fleet: Fleet) -> str:
    """The data plane a starting session goes to; DataPlaneUnavailable when none can take it."""
    configured = set(fleet.names)
    sibling = school_dataplane(session, school_id, live.id)
    if sibling is not None and sibling[0] in configured:
        dataplane, other_session = sibling
        if dataplane not in fleet.reachable:
            # Splitting the school over two data planes would pace its link in two places.
            raise DataPlaneUnavailable(
                f"Data plane {dataplane!r}, which forwards school {school_id}'s live session {other_session}, "
                "does not answer; try again in a moment."
            )
        return dataplane
    candidates = [spec for spec in fleet.dataplanes if spec.name in fleet.reachable]
    if not candidates:
        raise DataPlaneUnavailable(
            f"No relay data plane answers (configured: {', '.join(fleet.names)}); try again in a moment."
        )
    committed = committed_by_dataplane(session)
    # Most free budget first; the configuration order breaks ties, so placement is deterministic.
    best = max(candidates, key=lambda spec: (spec.capacity_bps - committed.get(spec.name, 0),
                                             -fleet.names.index(spec.name)))
    return best.name


def public_address(address: Sequence[Any] | None, spec: DataPlaneSpec | None) -> list[Any] | None:
    """A data plane's [host, port] as classrooms reach it (its public host replaces the bound one)."""
    if address is None:
        return None
    host, port = address
    return [spec.public_host if spec is not None and spec.public_host else host, port]
