"""The data plane's control channel is authenticated: only a connection that said `hello` with its secret
(here given in the environment; by default generated into a 0600 file) may do anything else."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
