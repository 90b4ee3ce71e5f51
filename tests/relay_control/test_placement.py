"""Placement of sessions on data planes: the configuration, the rule, and what each data plane is sent."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.classroom_relay import dataplane_state, lessons, placement, recordings, relay_settings
from services.classroom_relay.exceptions import DataPlaneUnavailable
from services.classroom_relay.models import MBIT
from services.classroom_relay.placement import DataPlaneSpec, Fleet

from .conftest import FACTS, NOW, classroom, lesson

TWO = (DataPlaneSpec("relay-0", "10.0.0.5:7070"), DataPlaneSpec("relay-1", "unix:/run/relay/control.sock"))


def test_the_fleet_comes_from_relay_dataplanes_or_the_single_address() -> None:
    specs = placement.parse_dataplanes(
        "relay-0=10.0.0.5:7070, relay-1=unix:/run/relay/control.sock", public_hosts="relay-0=203.0.113.10"
    )
    assert [(spec.name, spec.client_arguments(), spec.public_host) for spec in specs] == [
        ("relay-0", {"host": "10.0.0.5", "port": 7070}, "203.0.113.10"),
        ("relay-1", {"unix_path": "/run/relay/control.sock"}, None),
    ]
    [single] = placement.parse_dataplanes(None, "127.0.0.1:7171")
    assert (single.name, single.client_arguments()) == ("default", {"host": "127.0.0.1", "port": 7171})
    assert placement.dataplanes_from({})[0].address == "127.0.0.1:7070"


@pytest.mark.parametrize("text, hosts", [
    ("relay-0=10.0.0.5:7070,relay-0=10.0.0.6:7070", None),  # a name twice
    ("relay-0=10.0.0.5", None),  # no port
    ("relay-0", None),  # no address
    ("relay-0=10.0.0.5:7070", "relay-9=203.0.113.10"),  # public host of an unknown data plane
    ("relay-0=10.0.0.5:7070", "relay-0=relay.example.org"),  # SDPs need an address
])
def test_a_bad_fleet_stops_the_service_at_start(text: str, hosts: str | None) -> None:
    with pytest.raises(ValueError):
        placement.parse_dataplanes(text, public_hosts=hosts)


def test_a_public_host_replaces_the_bound_address() -> None:
    spec = DataPlaneSpec("relay-0", "10.0.0.5:7070", public_host="203.0.113.10")
    assert placement.public_address(["0.0.0.0", 5004], spec) == ["203.0.113.10", 5004]
    assert placement.public_address(["127.0.0.1", 5004], TWO[1]) == ["127.0.0.1", 5004]
    assert placement.public_address(None, spec) is None


@pytest.fixture
def rooms(db, admin, school) -> dict:
    """Two broadcasting rooms in master school 101, one in master school 201, and school 101's branches."""
    second = classroom(db, admin, 101, "录播教室二", "broadcasting")
    other = classroom(db, admin, 201, "录播教室", "broadcasting")
    db.commit()
    return {"first": school["master"]["id"], "second": second["id"], "other": other["id"],
            "branches": [room["id"] for room in school["branches"]]}


def start(db, admin, settings, master: int, fleet: Fleet, branches: list[int] = (), **extra) -> dict:
    created = lessons.create_session(
        db, admin, lesson(master_classroom_id=master, branch_classroom_ids=list(branches), **extra), settings, FACTS
    )
    return lessons.start_session(db, admin, created["id"], settings, now=NOW, fleet=fleet)


def test_the_most_free_data_plane_takes_a_new_school_and_the_school_stays_there(db, admin, settings, rooms):
    fleet = Fleet(TWO, frozenset({"relay-0", "relay-1"}))
    first = start(db, admin, settings, rooms["first"], fleet, rooms["branches"][:1], branch_bps=20 * MBIT)
    assert first["dataplane"] == "relay-0"  # equal budgets: the configuration order decides
    other = start(db, admin, settings, rooms["other"], fleet)
    assert other["dataplane"] == "relay-1"  # relay-0 carries 23 Mbit/s, relay-1 nothing
    # School 101's second lesson joins its first one although relay-1 has more room now.
    second = start(db, admin, settings, rooms["second"], fleet)
    assert second["dataplane"] == "relay-0"
    master_bps = 64_000 + 3 * MBIT  # the default tracks: Opus audio and one H.264 camera layer
    assert placement.committed_by_dataplane(db) == {"relay-0": 20 * MBIT + 2 * master_bps, "relay-1": master_bps}
    # The recorder beside relay-1 records its session: the relay's own egress, one more copy of the master.
    recordings.reconcile(db, recordings.Recorder("relay-1", "127.0.0.1", (42000, 42999)))
    assert placement.committed_by_dataplane(db) == {"relay-0": 20 * MBIT + 2 * master_bps,
                                                    "relay-1": 2 * master_bps}
    # Each data plane is sent only its own sessions.
    pushed = {name: [entry["session"] for entry in dataplane_state.desired_state(db, settings, name)["sessions"]]
              for name in ("relay-0", "relay-1")}
    assert pushed == {"relay-0": [f"session-{first['id']}", f"session-{second['id']}"],
                      "relay-1": [f"session-{other['id']}"]}
    assert dataplane_state.live_session_labels(db)[0] == {
        "session": f"session-{first['id']}", "dataplane": "relay-0",
        "master_classroom": f"classroom-{rooms['first']}", "master_school": "101",
    }


def test_unreachable_data_planes_are_skipped_and_none_reachable_refuses(db, admin, settings, rooms):
    only_second = Fleet(TWO, frozenset({"relay-1"}))
    assert start(db, admin, settings, rooms["first"], only_second)["dataplane"] == "relay-1"
    with pytest.raises(DataPlaneUnavailable, match="No relay data plane answers"):
        start(db, admin, settings, rooms["other"], Fleet(TWO, frozenset()))
    # The school's data plane is away: its next lesson waits rather than split the school.
    with pytest.raises(DataPlaneUnavailable, match="'relay-1'"):
        start(db, admin, settings, rooms["second"], Fleet(TWO, frozenset({"relay-0"})))


def test_ending_clears_the_placement_for_the_next_occurrence(db, admin, settings, rooms):
    live = start(db, admin, settings, rooms["first"], Fleet(TWO, frozenset({"relay-1"})), recurrence="daily")
    ended = lessons.end_session(db, admin, live["id"], now=NOW + timedelta(minutes=40))
    assert ended["status"] == "scheduled" and ended["dataplane"] is None
    assert dataplane_state.desired_state(db, settings, "relay-1")["sessions"] == []


def test_the_service_refuses_to_start_without_join_secrets(monkeypatch) -> None:
    monkeypatch.delenv("RELAY_JOIN_SECRETS", raising=False)
    monkeypatch.delenv("RELAY_ALLOW_DEV_SECRET", raising=False)
    with pytest.raises(ValueError, match="RELAY_JOIN_SECRETS"):
        relay_settings.settings_from({})
    development = relay_settings.settings_from({"RELAY_ALLOW_DEV_SECRET": "1"})
    assert development.join_secrets == [relay_settings.DEV_JOIN_SECRET]
    assert relay_settings.settings_from({"RELAY_JOIN_SECRETS": "new, old"}).join_secrets == ["new", "old"]
