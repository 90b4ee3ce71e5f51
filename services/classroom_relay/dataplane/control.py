"""The control channel's server: applies the control plane's requests to the engine.

The wire format, the operations and the client are in protocol.py.

With a control secret (``serve_control(secret=...)``), a connection must first send ``hello`` with
``"secret"``; anything else before that is answered ``unauthorized``. Without one nothing changes.
"""

from __future__ import annotations

import hmac
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from typing import Any

from . import rtp
from .engine import Engine
from .protocol import MAX_LINE_BYTES, PROTOCOL_VERSION


class ControlError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _address(value: Any, field: str) -> tuple[str, int]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ControlError("bad_request", f"{field} must be [host, port]")
    host, port = value
    if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
        raise ControlError("bad_request", f"{field} must be [host, port] with 0 < port < 65536")
    try:
        socket.inet_aton(host)
    except OSError as error:
        raise ControlError("bad_request", f"{field} host must be an IPv4 address") from error
    return host, port


def _text(request: dict, field: str) -> str:
    value = request.get(field)
    if not isinstance(value, str) or not value:
        raise ControlError("bad_request", f"{field} must be a non-empty string")
    return value


def _optional_budget(request: dict, field: str) -> float | None:
    return None if request.get(field) is None else _budget(request, field)


def _budget(request: dict, field: str) -> float:
    value = request.get(field)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ControlError("bad_request", f"{field} must be a positive number of bytes per second")
    return float(value)


class ControlHandler:
    """Applies one decoded request to the engine (under its lock) and returns the reply fields."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def handle(self, request: Any) -> dict:
        if not isinstance(request, dict):
            return {"ok": False, "error": "bad_request", "message": "a request is a JSON object"}
        request_id = request.get("id")
        op = request.get("op")
        method: Callable[[dict], dict] | None = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if method is None:
            return {"ok": False, "id": request_id, "error": "unknown_op", "message": f"unknown op {op!r}"}
        try:
            with self.engine.lock:
                reply = method(request)
        except ControlError as error:
            return {"ok": False, "id": request_id, "error": error.code, "message": str(error)}
        except (KeyError, ValueError) as error:
            return {"ok": False, "id": request_id, "error": "rejected", "message": str(error)}
        return {"ok": True, "id": request_id, **reply}

    def op_hello(self, request: dict) -> dict:
        engine = self.engine
        return {
            "instance": engine.instance,
            "protocol": PROTOCOL_VERSION,
            "media_address": list(engine.media_address),
            "rtcp_address": list(engine.rtcp_address),
            "gso": engine.gso_enabled,
        }

    def op_set_secrets(self, request: dict) -> dict:
        secrets = request.get("secrets")
        if not isinstance(secrets, list) or not secrets or not all(isinstance(s, str) and s for s in secrets):
            raise ControlError("bad_request", "secrets must be a non-empty list of strings")
        self.engine.set_secrets([secret.encode() for secret in secrets])
        return {}

    def op_set_session(self, request: dict) -> dict:
        self.engine.set_session(_text(request, "session"), _text(request, "master"))
        return {}

    def op_remove_session(self, request: dict) -> dict:
        return {"removed": self.engine.remove_session(_text(request, "session"))}

    def op_set_branch(self, request: dict) -> dict:
        return_address = request.get("return_address")
        output = self.engine.set_branch(
            _text(request, "session"),
            _text(request, "classroom"),
            _address(request.get("address"), "address"),
            _budget(request, "budget_bytes_per_second"),
            _optional_budget(request, "uplink_budget_bytes_per_second"),
            _address(return_address, "return_address") if return_address is not None else None,
        )
        return {"relay_address": list(output.relay_address), "ssrc": output.forwarder.out_ssrc}

    def op_remove_branch(self, request: dict) -> dict:
        return {"removed": self.engine.remove_branch(_text(request, "session"), _text(request, "classroom"))}

    def op_register_sender(self, request: dict) -> dict:
        reason = self.engine.register_sender(
            _text(request, "session"),
            _text(request, "classroom"),
            _text(request, "token"),
            _address(request.get("address"), "address"),
        )
        if reason != rtp.OK:
            raise ControlError(rtp.DROP_REASONS[reason], "join token refused")
        return {}

    def op_unregister_sender(self, request: dict) -> dict:
        return {"removed": self.engine.unregister_sender(_address(request.get("address"), "address"))}

    def op_set_state(self, request: dict) -> dict:
        sessions = request.get("sessions")
        if not isinstance(sessions, list):
            raise ControlError("bad_request", "sessions must be a list")
        if request.get("secrets") is not None:
            self.op_set_secrets(request)
        wanted = {_text(entry, "session") for entry in sessions if isinstance(entry, dict)}
        for existing in list(self.engine.sessions):
            if existing not in wanted:
                self.engine.remove_session(existing)
        refused: list[dict] = []
        for entry in sessions:
            if not isinstance(entry, dict):
                raise ControlError("bad_request", "each session is an object")
            session_id = _text(entry, "session")
            self.op_set_session(entry)
            branches = entry.get("branches", [])
            wanted_branches = {_text(branch, "classroom") for branch in branches}
            for existing_branch in list(self.engine.sessions[session_id].branches):
                if existing_branch not in wanted_branches:
                    self.engine.remove_branch(session_id, existing_branch)
            for branch in branches:
                self.op_set_branch({**branch, "session": session_id})
            for sender in entry.get("senders", []):
                try:
                    self.op_register_sender({**sender, "session": session_id})
                except ControlError as error:
                    refused.append({"session": session_id, "address": sender.get("address"), "error": error.code})
        return {"refused_senders": refused}

    def op_get_stats(self, request: dict) -> dict:
        stats = self.engine.snapshot()
        session = request.get("session")
        if session is not None:
            stats["sessions"] = {key: value for key, value in stats["sessions"].items() if key == session}
        return {"stats": stats}


class _LineHandler(socketserver.StreamRequestHandler):
    server: _ControlServerMixin

    def handle(self) -> None:
        authenticated = self.server.secret is None
        while True:
            line = self.rfile.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            if len(line) > MAX_LINE_BYTES:
                self._reply({"ok": False, "error": "too_large", "message": "request line too long"})
                return
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                reply = {"ok": False, "error": "bad_json", "message": "not a JSON line"}
            else:
                if not authenticated:
                    authenticated = self._authenticates(request)
                    reply = self.server.control.handle(request) if authenticated else {
                        "ok": False, "id": request.get("id") if isinstance(request, dict) else None,
                        "error": "unauthorized", "message": "send hello with the control secret first",
                    }
                else:
                    reply = self.server.control.handle(request)
            self._reply(reply)

    def _authenticates(self, request: Any) -> bool:
        if not isinstance(request, dict) or request.get("op") != "hello" or not isinstance(request.get("secret"), str):
            return False
        assert self.server.secret is not None
        return hmac.compare_digest(request["secret"].encode(), self.server.secret)

    def _reply(self, reply: dict) -> None:
        self.wfile.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")


class _ControlServerMixin(socketserver.BaseServer):
    control: ControlHandler
    secret: bytes | None = None
    daemon_threads = True
    allow_reuse_address = True


class _TcpControlServer(_ControlServerMixin, socketserver.ThreadingTCPServer):
    pass


class _UnixControlServer(_ControlServerMixin, socketserver.ThreadingUnixStreamServer):
    pass


def serve_control(
    engine: Engine, port: int | None = None, unix_path: str | None = None, host: str = "127.0.0.1",
    secret: str | None = None,
) -> _ControlServerMixin:
    """Start the control server in a daemon thread; returns it (``server_address`` has the port)."""
    if unix_path:
        if os.path.exists(unix_path):
            os.unlink(unix_path)  # a stale socket from a previous run
        server: _ControlServerMixin = _UnixControlServer(unix_path, _LineHandler)
    else:
        server = _TcpControlServer((host, port or 0), _LineHandler)
    server.control = ControlHandler(engine)
    server.secret = secret.encode() if secret else None
    threading.Thread(target=server.serve_forever, name="relay-control", daemon=True).start()
    return server
