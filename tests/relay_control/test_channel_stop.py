"""Stopping the control plane while a data-plane channel waits for a reply prints no traceback.

A data plane that accepts the connection but has not answered yet keeps the channel's green thread in
`readline`; the container's stop runs in another green thread (the Ctrl-C of `make run`).
"""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace

import eventlet

from services.classroom_relay import placement
from services.classroom_relay.dataplane.protocol import ControlClient
from services.classroom_relay.dataplane_client import DataPlaneChannel


def _silent_listener() -> tuple[socket.socket, list[socket.socket]]:
    """Accepts connections, reads nothing, answers nothing (a data plane busy or stuck)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _address = listener.accept()
            except OSError:
                return
            accepted.append(connection)

    threading.Thread(target=accept, daemon=True).start()
    return listener, accepted


def test_closing_a_client_another_green_thread_reads_from_raises_nothing():
    listener, accepted = _silent_listener()
    client = ControlClient(port=listener.getsockname()[1], timeout=5.0)
    outcome: list[BaseException | dict] = []

    def call() -> None:
        try:
            outcome.append(client.call("hello"))
        except BaseException as error:
            outcome.append(error)

    reader = eventlet.spawn(call)
    eventlet.sleep(0.2)  # the call is now blocked in readline
    client.interrupt()
    reader.wait()
    client.close()
    listener.close()
    for connection in accepted:
        connection.close()
    assert len(outcome) == 1 and isinstance(outcome[0], ConnectionError), outcome


def test_a_channel_stops_without_error_while_waiting_for_its_data_plane(caplog):
    listener, accepted = _silent_listener()
    spec = placement.DataPlaneSpec("relay-0", f"127.0.0.1:{listener.getsockname()[1]}")
    link = SimpleNamespace(running=True, control_secret=lambda: None, stats_interval=2.0, reconcile_interval=5.0)
    channel = DataPlaneChannel(spec, link)  # type: ignore[arg-type]
    thread = eventlet.spawn(channel.run)
    eventlet.sleep(0.2)  # hello sent, no answer: the thread waits in readline
    link.running = False
    channel.close()
    thread.wait()  # returns: neither RuntimeError ("reentrant call") nor a hang
    listener.close()
    for connection in accepted:
        connection.close()
    assert not [record for record in caplog.records if record.exc_info], caplog.text
    assert channel.client is None or channel.client._sock is None
