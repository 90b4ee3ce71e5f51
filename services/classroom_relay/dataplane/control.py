"""The control channel's server: applies the control plane's requests to the engine.

The wire format, the operations and the client are in protocol.py.

With a control secret (``serve_control(secret=...)``; ``__main__`` always has one), a connection must first
send ``hello`` with ``"secret"``; anything else before that is answered ``unauthorized``. At most
``max_connections`` connections at once (when all are taken, the oldest not yet authenticated gives way to
the new one; with none such, the new one is closed at accept), each closed after ``IDLE_SECONDS`` without a
request.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from typing import Any

from . import rtp
from .admission import DEFAULT_TRACK, SENDER_SLOT, TRACK_NAME
from .engine import Engine
from .protocol import MAX_LINE_BYTES, PROTOCOL_VERSION
from .stats import limits
from .streams import AUDIO, DEFAULT_CLOCK_RATES, VIDEO, Output, TrackSpec
from .topology import MemberSpec, OutputSpec

MAX_CONNECTIONS = 8
IDLE_SECONDS = 60.0  # the control plane re-pushes its state every few seconds; anything quieter is gone or stuck


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


def _output_reply(output: Output) -> dict:
    return {"session": output.session, "classroom": output.classroom, "source_classroom": output.source_classroom,
            "track": output.track.name, "relay_address": list(output.relay_address), "ssrc": output.forwarder.out_ssrc}


def _track_spec(value: Any) -> TrackSpec:
    if not isinstance(value, dict):
        raise ControlError("bad_request", "each track is an object")
    name = value.get("track")
    if not isinstance(name, str) or not TRACK_NAME.fullmatch(name):
        raise ControlError("bad_request", "track must match [a-z0-9_-]{1,32}")
    kind = value.get("kind", VIDEO)
    if kind not in (AUDIO, VIDEO):
        raise ControlError("bad_request", f"track {name}: kind must be audio or video")
    source = value.get("source", name)
    if not isinstance(source, str) or not TRACK_NAME.fullmatch(source):
        raise ControlError("bad_request", f"track {name}: source must match [a-z0-9_-]{{1,32}}")
    clock_rate = value.get("clock_rate", DEFAULT_CLOCK_RATES[kind])
    if not isinstance(clock_rate, int) or isinstance(clock_rate, bool) or not 1000 <= clock_rate <= 192_000:
        raise ControlError("bad_request", f"track {name}: clock_rate must be an integer 1000..192000")
    layers_bps = value.get("layers_bps") or []
    if not isinstance(layers_bps, list) or len(layers_bps) > 4 or not all(
        isinstance(rate, int | float) and not isinstance(rate, bool) and rate > 0 for rate in layers_bps
    ):
        raise ControlError("bad_request", f"track {name}: layers_bps must be up to 4 positive bit rates")
    return TrackSpec(name, kind, source, clock_rate, tuple(sorted(rate / 8 for rate in layers_bps)))


def _member_spec(value: Any) -> tuple[MemberSpec, list[dict]]:
    if not isinstance(value, dict):
        raise ControlError("bad_request", "each member is an object")
    classroom = _text(value, "classroom")
    tracks = value.get("tracks", [])
    if not isinstance(tracks, list):
        raise ControlError("bad_request", f"member {classroom}: tracks must be a list")
    specs = tuple(_track_spec(track) for track in tracks)
    if len({spec.name for spec in specs}) != len(specs):
        raise ControlError("bad_request", f"member {classroom}: track names must be unique")
    receive = value.get("receive")
    host, budget, outputs = None, 0.0, []
    if receive is not None:
        if not isinstance(receive, dict):
            raise ControlError("bad_request", f"member {classroom}: receive must be an object")
        host = _address([receive.get("host"), 1], "receive.host")[0]
        budget = _budget(receive, "budget_bytes_per_second")
        wanted = receive.get("outputs", [])
        if not isinstance(wanted, list) or not all(isinstance(output, dict) for output in wanted):
            raise ControlError("bad_request", f"member {classroom}: receive.outputs must be a list of objects")
        for output in wanted:
            port = _address([host, output.get("port")], "receive.outputs[].port")[1]
            track = output.get("track")
            if not isinstance(track, str) or not TRACK_NAME.fullmatch(track):
                raise ControlError("bad_request", "receive.outputs[].track must match [a-z0-9_-]{1,32}")
            outputs.append(OutputSpec(_text(output, "source_classroom"), track, port))
    senders = value.get("senders", [])
    if not isinstance(senders, list) or not all(isinstance(sender, dict) for sender in senders):
        raise ControlError("bad_request", f"member {classroom}: senders must be a list of objects")
    return MemberSpec(classroom, specs, host, budget, tuple(outputs)), [
        {**sender, "classroom": classroom} for sender in senders
    ]


LEGACY_CAMERA = {"track": DEFAULT_TRACK, "kind": VIDEO, "source": "camera"}


def _session_entry(entry: dict) -> tuple[list[MemberSpec], list[dict], str | None]:
    """(members, senders, master) of a session entry: protocol 2 (``members``) or protocol 1
    (``master`` + ``branches``: the master publishes a camera every branch receives; a branch with a
    ``return_address`` publishes a camera the master receives there)."""
    if "members" in entry:
        members = entry["members"]
        if not isinstance(members, list):
            raise ControlError("bad_request", "members must be a list")
        parsed = [_member_spec(member) for member in members]
        if len({spec.classroom for spec, _senders in parsed}) != len(parsed):
            raise ControlError("bad_request", "each classroom is a member once")
        return [spec for spec, _ in parsed], [sender for _, senders in parsed for sender in senders], None
    master = _text(entry, "master")
    branches = entry.get("branches", [])
    if not isinstance(branches, list) or not all(isinstance(branch, dict) for branch in branches):
        raise ControlError("bad_request", "branches must be a list of objects")
    master_outputs: list[dict] = []
    master_host = None
    branch_members: list[dict] = []
    for branch in branches:
        classroom = _text(branch, "classroom")
        if classroom == master:
            raise ControlError("rejected", "the master classroom cannot also be a branch of its session")
        host, port = _address(branch.get("address"), "address")
        member: dict = {"classroom": classroom, "tracks": [],
                        "receive": {"host": host, "budget_bytes_per_second": branch.get("budget_bytes_per_second"),
                                    "outputs": [{"source_classroom": master, "track": DEFAULT_TRACK, "port": port}]}}
        if branch.get("return_address") is not None:
            return_host, return_port = _address(branch.get("return_address"), "return_address")
            master_host = return_host
            member["tracks"] = [LEGACY_CAMERA]
            master_outputs.append({"source_classroom": classroom, "track": DEFAULT_TRACK, "port": return_port})
        branch_members.append(member)
    uplink = sum(float(branch.get("uplink_budget_bytes_per_second") or branch.get("budget_bytes_per_second") or 0)
                 for branch in branches if branch.get("return_address") is not None)
    master_member: dict = {"classroom": master, "tracks": [LEGACY_CAMERA]}
    if master_outputs:
        master_member["receive"] = {"host": master_host, "budget_bytes_per_second": uplink, "outputs": master_outputs}
    senders = entry.get("senders", [])
    if not isinstance(senders, list) or not all(isinstance(sender, dict) for sender in senders):
        raise ControlError("bad_request", "senders must be a list of objects")
    specs = [_member_spec(member)[0] for member in [master_member, *branch_members]]
    return specs, [{"track": DEFAULT_TRACK, **sender} for sender in senders], master


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
            "media_ports": list(engine.config.media_ports) if engine.config.media_ports else None,
            "limits": limits(engine.config),
        }

    def op_set_secrets(self, request: dict) -> dict:
        secrets = request.get("secrets")
        if not isinstance(secrets, list) or not secrets or not all(isinstance(s, str) and s for s in secrets):
            raise ControlError("bad_request", "secrets must be a non-empty list of strings")
        self.engine.set_secrets([secret.encode() for secret in secrets])
        return {}

    def op_set_session(self, request: dict) -> dict:
        """One session, in either form (see ``op_set_state``); returns its outputs. Protocol 1's
        ``set_session(session, master)`` keeps the branches ``set_branch`` added."""
        session_id = _text(request, "session")
        existing = self.engine.sessions.get(session_id)
        if "members" not in request and "branches" not in request:
            same_master = existing is not None and existing.master == request.get("master")
            branches = list(existing.legacy_branches.values()) if same_master and existing else []
            request = {**request, "branches": branches}
        members, senders, master = _session_entry(request)
        outputs, refused = self.engine.set_session(session_id, members)
        found = self.engine.sessions[session_id]
        found.master = master
        found.legacy_branches = {branch["classroom"]: branch for branch in request.get("branches", [])}
        refused_senders = self._register_senders(session_id, senders)
        return {"outputs": [_output_reply(output) for output in outputs], "refused_outputs": refused,
                "refused_senders": refused_senders}

    def _register_senders(self, session_id: str, senders: list[dict]) -> list[dict]:
        refused = []
        for sender in senders:
            try:
                self.op_register_sender({**sender, "session": session_id})
            except ControlError as error:
                refused.append({"session": session_id, "classroom": sender.get("classroom"),
                                "track": sender.get("track", DEFAULT_TRACK), "address": sender.get("address"),
                                "error": error.code})
        return refused

    def op_set_branch(self, request: dict) -> dict:
        """Protocol 1: add or change one branch of a ``master`` session; the reply names its downlink."""
        session_id, classroom = _text(request, "session"), _text(request, "classroom")
        found = self.engine.sessions.get(session_id)
        if found is None or found.master is None:
            raise ControlError("rejected", f"unknown session {session_id!r}")
        branch = {key: value for key, value in request.items() if key not in ("op", "id", "session")}
        branches = {**found.legacy_branches, classroom: branch}
        reply = self.op_set_session(
            {"session": session_id, "master": found.master, "branches": list(branches.values())}
        )
        for output in reply["outputs"]:
            if output["classroom"] == classroom and output["source_classroom"] == found.master:
                return {"relay_address": output["relay_address"], "ssrc": output["ssrc"]}
        raise ControlError("rejected", f"no output for {classroom}: {reply['refused_outputs']}")

    def op_remove_branch(self, request: dict) -> dict:
        session_id, classroom = _text(request, "session"), _text(request, "classroom")
        found = self.engine.sessions.get(session_id)
        if found is None or found.master is None or classroom not in found.legacy_branches:
            return {"removed": False}
        branches = [branch for name, branch in found.legacy_branches.items() if name != classroom]
        self.op_set_session({"session": session_id, "master": found.master, "branches": branches})
        return {"removed": True}

    def op_remove_session(self, request: dict) -> dict:
        return {"removed": self.engine.remove_session(_text(request, "session"))}

    def op_register_sender(self, request: dict) -> dict:
        track = request.get("track", DEFAULT_TRACK)
        if not isinstance(track, str) or not SENDER_SLOT.fullmatch(track):
            raise ControlError("bad_request", "track must match [a-z0-9_-]{1,32}, optionally with :LAYER (0-3)")
        reason = self.engine.register_sender(
            _text(request, "session"),
            _text(request, "classroom"),
            track,
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
        if not isinstance(sessions, list) or not all(isinstance(entry, dict) for entry in sessions):
            raise ControlError("bad_request", "sessions must be a list of objects")
        if request.get("secrets") is not None:
            self.op_set_secrets(request)
        parsed = [(_text(entry, "session"), entry) for entry in sessions]  # validate names before any change
        wanted = {session_id for session_id, _entry in parsed}
        for existing in list(self.engine.sessions):
            if existing not in wanted:
                self.engine.remove_session(existing)
        outputs: list[dict] = []
        refused_outputs: list[dict] = []
        refused_senders: list[dict] = []
        for _session_id, entry in parsed:
            try:
                reply = self.op_set_session(entry)
            except (ControlError, ValueError) as error:  # one bad or over-limit session never blocks the others
                refused_outputs.append({"session": entry.get("session"), "error": getattr(error, "code", "rejected"),
                                        "message": str(error)})
                continue
            outputs += reply["outputs"]
            refused_outputs += reply["refused_outputs"]
            refused_senders += reply["refused_senders"]
        return {"outputs": outputs, "refused_outputs": refused_outputs, "refused_senders": refused_senders}

    def op_get_stats(self, request: dict) -> dict:
        stats = self.engine.snapshot()
        session = request.get("session")
        if session is not None:
            stats["sessions"] = {key: value for key, value in stats["sessions"].items() if key == session}
        return {"stats": stats}


class _LineHandler(socketserver.StreamRequestHandler):
    server: _ControlServerMixin

    def setup(self) -> None:
        self.request.settimeout(self.server.idle_seconds)  # an idle or slow connection does not hold a slot
        super().setup()

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.release(self.request)

    def handle(self) -> None:
        with contextlib.suppress(OSError):  # a timeout or a reset ends this connection only
            self._serve()

    def _serve(self) -> None:
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
                    if authenticated:
                        self.server.authenticated(self.request)
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
    max_connections = MAX_CONNECTIONS
    idle_seconds = IDLE_SECONDS
    connections = 0
    refused_connections = 0
    connections_lock = threading.Lock()

    waiting: dict[Any, None]  # connections not yet authenticated, oldest first
    evicted: set[Any]

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """At most ``max_connections`` at once: the control plane needs one per data plane, tests a few. When
        all are taken, the oldest connection that has not said ``hello`` gives way: without that, a few
        silent connections from anyone on the host locked the control plane out."""
        with self.connections_lock:
            if self.connections >= self.max_connections:
                if not self.waiting:
                    self.refused_connections += 1
                    return False
                oldest = next(iter(self.waiting))
                del self.waiting[oldest]
                self.evicted.add(oldest)
                self.connections -= 1
                with contextlib.suppress(OSError):
                    oldest.shutdown(socket.SHUT_RDWR)  # its handler's read ends; it closes the socket
            self.connections += 1
            if self.secret is not None:
                self.waiting[request] = None
            return True

    def authenticated(self, request: Any) -> None:
        with self.connections_lock:
            self.waiting.pop(request, None)

    def release(self, request: Any) -> None:
        with self.connections_lock:
            self.waiting.pop(request, None)
            if request in self.evicted:
                self.evicted.discard(request)  # already given back when it gave way
            else:
                self.connections -= 1


class _TcpControlServer(_ControlServerMixin, socketserver.ThreadingTCPServer):
    pass


class _UnixControlServer(_ControlServerMixin, socketserver.ThreadingUnixStreamServer):
    pass


def serve_control(
    engine: Engine, port: int | None = None, unix_path: str | None = None, host: str = "127.0.0.1",
    secret: str | None = None, max_connections: int = MAX_CONNECTIONS,
) -> _ControlServerMixin:
    """Start the control server in a daemon thread; returns it (``server_address`` has the port).
    A Unix socket is made readable and writable by its owner only."""
    if unix_path:
        if os.path.exists(unix_path):
            os.unlink(unix_path)  # a stale socket from a previous run
        previous_umask = os.umask(0o177)
        try:
            server: _ControlServerMixin = _UnixControlServer(unix_path, _LineHandler)
        finally:
            os.umask(previous_umask)
    else:
        server = _TcpControlServer((host, port or 0), _LineHandler)
    server.control = ControlHandler(engine)
    server.secret = secret.encode() if secret else None
    server.max_connections = max_connections
    server.connections_lock = threading.Lock()
    server.waiting, server.evicted = {}, set()
    threading.Thread(target=server.serve_forever, name="relay-control", daemon=True).start()
    return server
