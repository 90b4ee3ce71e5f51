"""Link budgets: would these flows push any link past its budget? Pure functions, no database.

Where the traffic goes (documented assumption, as in the source document: the master school hosts the
recording and live server, so the relay sits behind the master school's link):

- source: broadcasting room → relay, inside the master school: the master room's uplink.
- downstream, per branch: relay → branch room: the master school's link, the branch school's link
  (when it is another school) and the branch room's downlink.
- return, per branch: branch camera → relay → master room: the branch room's uplink, the branch
  school's link, the master school's link and the master room's downlink.

A link's budget is `capacity × headroom`; a request is refused when `committed + asked > budget`.
Links are counted as one total (as the bureau sizes them), not per direction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.classroom_relay.exceptions import AdmissionRefused, InvalidInput
from services.classroom_relay.settings import ADMISSION_HEADROOM

DEFAULT_HEADROOM = ADMISSION_HEADROOM.default


@dataclass(frozen=True)
class Link:
    """One constrained link: `kind` is school_link, classroom_uplink or classroom_downlink."""

    kind: str
    owner_id: int

    def describe(self) -> str:
        if self.kind == "school_link":
            return f"the internet link of school {self.owner_id}"
        direction = "uplink" if self.kind == "classroom_uplink" else "downlink"
        return f"the {direction} of classroom {self.owner_id}"


@dataclass(frozen=True)
class Room:
    """What admission needs to know about a classroom."""

    id: int
    school_id: int
    uplink_capacity_bps: int
    downlink_capacity_bps: int


@dataclass(frozen=True)
class Load:
    link: Link
    bps: int


def school_link(school_id: int) -> Link:
    return Link("school_link", school_id)


def uplink(room: Room) -> Link:
    return Link("classroom_uplink", room.id)


def downlink(room: Room) -> Link:
    return Link("classroom_downlink", room.id)


def source_loads(master: Room, source_bps: int) -> list[Load]:
    return [Load(uplink(master), source_bps)]


def branch_loads(master: Room, branch: Room, downlink_bps: int, return_bps: int) -> list[Load]:
    """Every link a branch's downstream and return path cross (see the module docstring)."""
    loads = [Load(school_link(master.school_id), downlink_bps), Load(downlink(branch), downlink_bps)]
    if branch.school_id != master.school_id:
        loads.append(Load(school_link(branch.school_id), downlink_bps))
    if return_bps:
        loads += [
            Load(uplink(branch), return_bps),
            Load(school_link(master.school_id), return_bps),
            Load(downlink(master), return_bps),
        ]
        if branch.school_id != master.school_id:
            loads.append(Load(school_link(branch.school_id), return_bps))
    return loads


def total_by_link(loads: Iterable[Load]) -> dict[Link, int]:
    totals: dict[Link, int] = defaultdict(int)
    for load in loads:
        totals[load.link] += load.bps
    return dict(totals)


def capacities_of(rooms: Iterable[Room], school_links: Mapping[int, int]) -> dict[Link, int]:
    capacities = {school_link(school_id): bps for school_id, bps in school_links.items()}
    for room in rooms:
        capacities[uplink(room)] = room.uplink_capacity_bps
        capacities[downlink(room)] = room.downlink_capacity_bps
    return capacities


def mbit(bps: float) -> str:
    return f"{bps / 1_000_000:.1f} Mbit/s"


def check(
    capacities: Mapping[Link, int],
    committed: Iterable[Load],
    requested: Iterable[Load],
    *,
    headroom: float = DEFAULT_HEADROOM,
    what: str = "this request",
) -> None:
    """Raise `AdmissionRefused` naming the first link (in a stable order) the request would overfill."""
    if not 0 < headroom <= 1:
        raise InvalidInput(f"Admission headroom must be in (0, 1], not {headroom}.")
    already = total_by_link(committed)
    asked = total_by_link(requested)
    for link in sorted(asked, key=lambda item: (item.kind != "school_link", item.kind, item.owner_id)):
        if link not in capacities:
            raise InvalidInput(f"No capacity is known for {link.describe()}.")
        capacity = capacities[link]
        budget = int(capacity * headroom)
        in_use = already.get(link, 0)
        if in_use + asked[link] > budget:
            raise AdmissionRefused(
                f"Refused {what}: {link.describe()} has a capacity of {mbit(capacity)} "
                f"(budget {mbit(budget)} at {headroom:.0%} headroom); {mbit(in_use)} is already committed "
                f"and {mbit(asked[link])} was asked, {mbit(in_use + asked[link] - budget)} too much.",
                {
                    "link": link.kind,
                    "link_owner_id": link.owner_id,
                    "capacity_bps": capacity,
                    "headroom": headroom,
                    "budget_bps": budget,
                    "committed_bps": in_use,
                    "requested_bps": asked[link],
                },
            )
