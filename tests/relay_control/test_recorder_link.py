"""The control plane's link to the processes beside a data plane (sidecar_link.py) and what it accepts of a
recorder's `hello` (recorder_link.py); the link against the real recorder is in test_recording_end_to_end.py."""

from __future__ import annotations

import socket

import pytest

from services.classroom_relay import sidecar_link
from services.classroom_relay.recorder_link import RecorderLink, recorder_of
from services.classroom_relay.sidecar_link import SidecarClients


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once the probe is closed


def test_a_process_that_is_away_is_retried_after_a_growing_wait_never_raised() -> None:
    clients = SidecarClients({"relay-0": f"127.0.0.1:{closed_port()}"}, lambda: "secret", "recorder")
    assert clients.call("relay-0", "get_stats") is None and clients.failures == 1
    first_wait = clients.backoff["relay-0"][1]
    assert clients.call("relay-0", "get_stats") is None and clients.failures == 1  # waiting: not even tried
    assert clients.hello("relay-0") is None and clients.call("unknown", "hello") is None
    clients.backoff["relay-0"] = (0.0, first_wait)  # the wait is over
    assert clients.call("relay-0", "get_stats") is None and clients.failures == 2
    assert clients.backoff["relay-0"][1] == 2 * first_wait <= sidecar_link.MAX_RETRY_SECONDS


@pytest.mark.parametrize("hello", [
    None, [], {}, {"media_host": "127.0.0.1"}, {"media_host": "127.0.0.1", "media_ports": [42000]},
    {"media_host": "127.0.0.1", "media_ports": [43000, 42000]}, {"media_host": "127.0.0.1", "media_ports": ["a", 1]},
    {"media_host": "0.0.0.0", "media_ports": [42000, 42999]}, {"media_host": "", "media_ports": [42000, 42999]},
    {"media_host": "no-such-host.invalid", "media_ports": [42000, 42999]},
    {"media_host": 5, "media_ports": [42000, 42999]}, {"media_host": "127.0.0.1", "media_ports": [0, 70000]},
])
def test_a_recorder_advertising_nothing_usable_is_not_used(hello: object) -> None:
    assert recorder_of("relay-0", hello) is None  # type: ignore[arg-type]


def test_a_recorder_name_is_resolved_to_the_address_the_data_plane_sends_to() -> None:
    recorder = recorder_of("relay-0", {"media_host": "localhost", "media_ports": [42000, 42999]})
    assert recorder is not None and (recorder.media_host, recorder.media_ports) == ("127.0.0.1", (42000, 42999))


def test_without_recorders_or_a_database_the_link_does_nothing() -> None:
    link = RecorderLink({}, lambda: None)
    assert not link.wanted("relay-0")
    link.prepare("relay-0")
    assert link.push_for("relay-0", ["127.0.0.1", 5004]) is None and link.poll("relay-0") == []
    assert link.failures == 0
    with pytest.raises(ValueError, match="RELAY_RECORDERS"):
        RecorderLink.from_config({"RELAY_RECORDERS": "relay-0"}, None, lambda: None)  # type: ignore[arg-type]
