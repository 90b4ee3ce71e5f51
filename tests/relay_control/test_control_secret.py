"""The data plane's control channel is authenticated: only a connection that said `hello` with its secret
(here given in the environment; by default generated into a 0600 file) may do anything else."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from services.classroom_relay.dataplane.control import MAX_CONNECTIONS
from services.classroom_relay.dataplane.protocol import ControlClient
from tests.relay.relay_harness import DataPlane, start_dataplane, stop_process

SECRET = "control-test-secret"


@pytest.fixture
def guarded_dataplane(tmp_path) -> Iterator[DataPlane]:
    secret_file = tmp_path / "control.secret"
    secret_file.write_text(SECRET + "\n")
    plane = start_dataplane("--control-host", "127.0.0.1", secret_file=str(secret_file))
    try:
        yield plane
    finally:
        plane.control.close()
        stop_process(plane.process)
        assert plane.process.stderr is not None
        assert "Traceback" not in plane.process.stderr.read().decode(errors="replace")


def test_only_a_client_with_the_secret_is_served(guarded_dataplane: DataPlane) -> None:
    port = guarded_dataplane.control_port
    anonymous = ControlClient(port=port, timeout=3)  # knows no secret
    refused = anonymous.call("set_state", sessions=[])
    assert (refused["ok"], refused["error"]) == (False, "unauthorized")
    assert anonymous.call("hello", secret="wrong")["error"] == "unauthorized"
    with pytest.raises(PermissionError), ControlClient(port=port, timeout=3, secret="wrong") as impostor:
        impostor.call("get_stats")
    anonymous.close()
    with ControlClient(port=port, timeout=3, secret=SECRET) as trusted:
        assert trusted.call("set_state", sessions=[])["ok"]
        assert trusted.call("get_stats")["stats"]["sessions"] == {}


def test_silent_connections_cannot_lock_the_control_plane_out(guarded_dataplane: DataPlane) -> None:
    """Anyone on the host can open connections; before, eight that never said `hello` took every slot for a
    minute and the control plane's own connection was closed at accept. Now the oldest silent one gives way,
    and a connection that authenticated is never the one that does."""
    port = guarded_dataplane.control_port
    with ControlClient(port=port, timeout=3, secret=SECRET) as early:
        assert early.call("get_stats")["ok"]
        silent = [socket.create_connection(("127.0.0.1", port), timeout=3) for _ in range(3 * MAX_CONNECTIONS)]
        try:
            with ControlClient(port=port, timeout=3, secret=SECRET) as late:
                assert late.call("set_state", sessions=[])["ok"]
            assert early.call("get_stats")["ok"]  # still served on the connection it had
            assert guarded_dataplane.process.poll() is None
        finally:
            for connection in silent:
                connection.close()
