"""The data plane's control channel as the other side sees it: wire format, operations, a client.

Line-delimited JSON over TCP (127.0.0.1 unless told otherwise) or a Unix socket. One request per line,
one reply per line, in order. Every request is ``{"op": ..., "id": <optional, echoed>}`` plus fields;
every reply is ``{"ok": true, "id": ..., ...}`` or ``{"ok": false, "id": ..., "error": <code>,
"message": <text>}``. All mutating operations are idempotent "make it so" requests, and ``set_state``
replaces the whole desired state at once, so either side may restart at any time: the control plane
reconnects, sees a new ``instance`` in ``hello`` and pushes its state again. ``OPERATIONS`` lists the
operations and their fields (the reference both planes follow); control.py is the server.

Protocol 2: a session is a set of members; each publishes tracks (audio, camera, courseware, ...) and
receives one output per (source classroom, track) on its own port, within one budget. A session entry of
protocol 1 (``master`` + ``branches``) is still accepted and translated (the master's camera to every branch).

The data plane always has a control secret (generated into a 0600 file when none is given): a connection
must first send ``hello`` with ``"secret"``; anything else before that is answered ``unauthorized``.

Standard library only: this is the part of the data plane the control plane (dataplane_client.py) and
tests import, so neither loads the engine or its ctypes code.
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any, BinaryIO

PROTOCOL_VERSION = 2
MAX_LINE_BYTES = 1 << 20

_TRACK = (
    "{track: [a-z0-9_-]{1,32}, kind: audio|video, source: label, clock_rate?: 48000 audio / 90000 video, "
    "layers_bps?: [bit/s ascending]}"
)
_RECEIVE = "{host, budget_bytes_per_second, outputs: [{source_classroom, track, port}]}"
_SENDER = "{track ('camera' or 'camera:1' = layer slot 1), token, address: [host, port]}"
_SESSION = f"{{session, members: [{{classroom, tracks: [{_TRACK}], receive?: {_RECEIVE}, senders?: [{_SENDER}]}}]}}"
_OUTPUT = "{session, classroom (receiver), source_classroom, track, relay_address: [host, port], ssrc}"

OPERATIONS = {
    "hello": "secret? → instance, protocol, media_address, rtcp_address, gso, media_ports: [lo, hi] | null, limits",
    "set_secrets": "secrets: [str] (first = current; all accepted for verification)",
    "set_state": f"secrets?, sessions: [{_SESSION}] — replaces everything → outputs: [{_OUTPUT}], "
    "refused_outputs: [{session, classroom?, source_classroom?, track?, error, message}], "
    "refused_senders: [{session, classroom, track, address, error}]",
    "set_session": f"{_SESSION} → outputs, refused_outputs, refused_senders (one session, same shapes)",
    "remove_session": "session → removed",
    "register_sender": "session, classroom, track? (default camera), token, address: [host, port] — an explicit "
    "hand-over: replaces the track's (layer slot's) previous sender",
    "unregister_sender": "address: [host, port] → removed",
    "get_stats": "session? → stats: {instance, drops: {reason: n}, senders: [...], sessions: {id: {members, "
    "tracks: [{classroom, track, kind, source, clock_rate, live, loss_ratio|null, jitter_seconds|null, layers, "
    "senders, ...}], outputs: [{classroom, source_classroom, track, kind, source, relay_address, ssrc, "
    "budget_bytes_per_second, reported, loss_ratio|null, jitter_seconds|null, rtt_seconds|null, rtcp_from, "
    "rtcp_refused, first_keyframe_after_seconds|null, ...}], receivers: {classroom: {budget, audio, video}}}}}",
    # Protocol 1, kept while control planes move over: the master publishes a camera, branches receive it.
    "set_branch": "(protocol 1) session, classroom, address, budget_bytes_per_second, "
    "uplink_budget_bytes_per_second?, return_address? → relay_address, ssrc",
    "remove_branch": "(protocol 1) session, classroom → removed",
}


class ControlClient:
    """A small blocking client (usable from the nameko control plane and from tests).

    Reconnects once per call when the data plane went away, so a restarted data plane is reached
    again; the caller notices the restart by ``hello()["instance"]`` changing. With ``secret`` every
    new connection starts with an authenticating ``hello``.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, unix_path: str | None = None, timeout: float = 5.0,
        secret: str | None = None,
    ) -> None:
        self.secret = secret
        self.host = host
        self.port = port
        self.unix_path = unix_path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._reader: BinaryIO | None = None
        self._next_id = 0
        self._interrupted = False

    def _connect(self) -> None:
        if self.unix_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        else:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self._sock = sock
        self._reader = sock.makefile("rb")
        if self.secret:
            sock.sendall(json.dumps({"op": "hello", "secret": self.secret}).encode() + b"\n")
            reply = json.loads(self._reader.readline(MAX_LINE_BYTES + 1) or b"{}")
            if not reply.get("ok"):
                self.close()
                raise PermissionError(f"the data plane refused the control secret: {reply.get('error')}")

    def interrupt(self) -> None:
        """Make a call blocked on this connection in another (green) thread fail at once, and every
        later call: the client is done.

        Only the thread that calls may close the client: closing a file object another thread is
        reading from raises ``RuntimeError: reentrant call``. Shutting the socket down instead ends
        that read with end-of-file (``ConnectionResetError`` from ``call``)."""
        self._interrupted = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._reader = None

    def call(self, op: str, **fields: Any) -> dict:
        self._next_id += 1
        line = json.dumps({"op": op, "id": self._next_id, **fields}).encode() + b"\n"
        for attempt in (1, 2):
            try:
                if self._interrupted:
                    raise ConnectionAbortedError("control client interrupted")
                if self._sock is None or self._reader is None:
                    self._connect()
                assert self._sock is not None and self._reader is not None  # _connect sets both
                self._sock.sendall(line)
                reply = self._reader.readline(MAX_LINE_BYTES + 1)
                if not reply:
                    raise ConnectionResetError("control channel closed")
                return json.loads(reply)
            except OSError:
                self.close()
                if attempt == 2 or self._interrupted:
                    raise
        raise AssertionError("unreachable")

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
