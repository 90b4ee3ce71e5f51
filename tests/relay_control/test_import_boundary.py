"""The control plane talks to the data plane through its face (dataplane/protocol.py), never its loop."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = (
    "services.classroom_relay.dataplane.engine",
    "services.classroom_relay.dataplane.udpbatch",  # the ctypes recvmmsg/sendmmsg code
    "services.classroom_relay.dataplane.control",
)


def test_the_control_plane_loads_neither_the_engine_nor_its_ctypes_code():
    probe = (
        "import json, sys; import services.classroom_relay.service; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('services.classroom_relay.dataplane'))))"
    )
    probed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = json.loads(probed.stdout)
    assert "services.classroom_relay.dataplane.protocol" in loaded
    assert not set(FORBIDDEN) & set(loaded), loaded
