"""Link budgets as pure functions: links, headroom, and refusals that carry the numbers."""

from __future__ import annotations

import re

import pytest

from services.classroom_relay import link_budgets
from services.classroom_relay.exceptions import AdmissionRefused, InvalidInput
from services.classroom_relay.models import MBIT

MASTER = link_budgets.Room(id=1, school_id=101, uplink_capacity_bps=25 * MBIT, downlink_capacity_bps=10 * MBIT)


def branch(room_id: int, school_id: int, downlink: int = 40 * MBIT) -> link_budgets.Room:
    return link_budgets.Room(room_id, school_id, uplink_capacity_bps=25 * MBIT, downlink_capacity_bps=downlink)


def capacities(*rooms: link_budgets.Room, school_link: int = 100 * MBIT, branch_link: int = 1000 * MBIT) -> dict:
    links = {101: school_link} | {room.school_id: branch_link for room in rooms if room.school_id != 101}
    return link_budgets.capacities_of([MASTER, *rooms], links)


def test_third_forty_megabit_branch_is_refused_by_the_master_school_link_with_numbers():
    rooms = [branch(2, 102), branch(3, 103), branch(4, 104)]
    committed = link_budgets.branch_loads(MASTER, rooms[0], 40 * MBIT, 0) + link_budgets.branch_loads(
        MASTER, rooms[1], 40 * MBIT, 0
    )
    with pytest.raises(AdmissionRefused) as refused:
        link_budgets.check(capacities(*rooms), committed, link_budgets.branch_loads(MASTER, rooms[2], 40 * MBIT, 0),
                        headroom=0.9, what="branch classroom 4")
    message = str(refused.value)
    assert "school 101" in message
    assert "100.0 Mbit/s" in message and "90.0 Mbit/s" in message
    assert "80.0 Mbit/s is already committed" in message and "40.0 Mbit/s was asked" in message
    assert refused.value.fields == {
        "link": "school_link", "link_owner_id": 101, "capacity_bps": 100 * MBIT, "headroom": 0.9,
        "budget_bps": 90 * MBIT, "committed_bps": 80 * MBIT, "requested_bps": 40 * MBIT,
    }


def test_headroom_decides_whether_the_same_request_fits():
    rooms = [branch(2, 102), branch(3, 103)]
    committed = link_budgets.branch_loads(MASTER, rooms[0], 50 * MBIT, 0)
    asked = link_budgets.branch_loads(MASTER, rooms[1], 50 * MBIT, 0)
    rooms_with_room = [branch(2, 102, 60 * MBIT), branch(3, 103, 60 * MBIT)]
    link_budgets.check(capacities(*rooms_with_room), committed, asked, headroom=1.0)  # exactly 100 M: fits
    with pytest.raises(AdmissionRefused, match=r"95\.0 Mbit/s"):
        link_budgets.check(capacities(*rooms_with_room), committed, asked, headroom=0.95)


def test_broadcasting_uplink_of_25_megabit_refuses_a_bigger_source():
    link_budgets.check(capacities(), [], link_budgets.source_loads(MASTER, 22 * MBIT), headroom=0.9)
    with pytest.raises(AdmissionRefused) as refused:
        link_budgets.check(capacities(), [], link_budgets.source_loads(MASTER, 23 * MBIT), headroom=0.9)
    assert refused.value.fields["link"] == "classroom_uplink"
    assert refused.value.fields["capacity_bps"] == 25 * MBIT
    assert "uplink of classroom 1" in str(refused.value)


def test_branch_downlink_is_checked_even_when_the_school_link_has_room():
    small = branch(2, 102, downlink=10 * MBIT)
    with pytest.raises(AdmissionRefused) as refused:
        link_budgets.check(capacities(small), [], link_budgets.branch_loads(MASTER, small, 12 * MBIT, 0))
    assert refused.value.fields["link"] == "classroom_downlink"
    assert refused.value.fields["link_owner_id"] == 2


def test_return_paths_count_on_the_master_school_link_and_the_master_downlink():
    room = branch(2, 102)
    loads = link_budgets.total_by_link(link_budgets.branch_loads(MASTER, room, 10 * MBIT, 2 * MBIT))
    assert loads[link_budgets.school_link(101)] == 12 * MBIT
    assert loads[link_budgets.school_link(102)] == 12 * MBIT
    assert loads[link_budgets.downlink(MASTER)] == 2 * MBIT
    assert loads[link_budgets.uplink(room)] == 2 * MBIT
    # Five 2 Mbit/s cameras back into a 10 Mbit/s master room exceed 90 % of it.
    committed = [load for index in range(4) for load in link_budgets.branch_loads(MASTER, branch(10 + index, 102),
                                                                               1 * MBIT, 2 * MBIT)]
    with pytest.raises(AdmissionRefused, match="downlink of classroom 1"):
        link_budgets.check(capacities(room), committed, link_budgets.branch_loads(MASTER, room, 1 * MBIT, 2 * MBIT))


def test_a_branch_in_the_master_school_does_not_count_twice_on_its_link():
    inside = branch(2, 101)
    loads = link_budgets.total_by_link(link_budgets.branch_loads(MASTER, inside, 10 * MBIT, 0))
    assert loads[link_budgets.school_link(101)] == 10 * MBIT


@pytest.mark.parametrize("headroom", [0, -0.1, 1.5])
def test_nonsense_headroom_is_invalid_input(headroom):
    with pytest.raises(InvalidInput):
        link_budgets.check(capacities(), [], link_budgets.source_loads(MASTER, MBIT), headroom=headroom)


def test_every_link_target_the_alert_rules_name_is_exported_under_that_label():
    """One definition (services/common/link_targets.py), one label set: what the rules compare against."""
    from pathlib import Path

    from services.common.link_targets import LINK_TARGETS_BPS

    root = Path(__file__).resolve().parents[2]
    for rules in ("deploy/prometheus/rules/relay.yml", "k8s/base/monitoring/prometheusrule.yaml"):
        named = set(re.findall(r'link_target_bytes_per_second\{link="([a-z_]+)"\}', (root / rules).read_text()))
        assert named and named <= set(LINK_TARGETS_BPS), (rules, named)
    assert LINK_TARGETS_BPS["master_school"] == 100 * MBIT
