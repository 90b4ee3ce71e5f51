"""What the processes beside a data plane share (the ingest and the recorder): the control channel in the data
plane's wire format (dataplane/protocol.py: line-delimited JSON, `hello` with the control secret first, one
reply per request, dispatched by `op`), the command line's control/metrics options, the control secret, a
Prometheus exporter on its own registry, stop signals, stopping a child."""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import logging
import signal
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.registry import Collector

from services.classroom_relay import settings
from services.classroom_relay.dataplane.protocol import MAX_LINE_BYTES

IDLE_SECONDS = 60.0
# Before `hello`: a client has this long and this many bytes to say it (a hello line is ~100 bytes).
HELLO_SECONDS = 5.0
HELLO_LINE_BYTES = 4096
# The control plane needs one connection per process it controls (two replicas: two); tests a few more.
MAX_CONNECTIONS = 16
SECRET_WAIT_SECONDS = 30.0


class BadRequest(Exception):
    """Malformed control input: answered as `bad_request`, and nothing changes."""


def add_control_arguments(parser: argparse.ArgumentParser, control_port: int, metrics_port: int) -> None:
    """The options every sidecar takes: where its control channel and /metrics listen, the secret's file."""
    parser.add_argument("--control-host", default="127.0.0.1")
    parser.add_argument("--control-port", type=int, default=control_port)
    parser.add_argument("--metrics-host", default="127.0.0.1")
    parser.add_argument("--metrics-port", type=int, default=metrics_port, help="0: no /metrics")
    parser.add_argument("--control-secret-file", default=None, help="default: RELAY_CONTROL_SECRET_FILE")


def start_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")


def on_stop_signal(stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call `stop` (which asks the main loop to finish; the loop cleans up)."""

    def request_stop(_signal: int, _frame: object) -> None:
        stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def answer(request: Any, operations: Mapping[str, Callable[[dict], dict]],
           storage_errors: tuple[type[BaseException], ...] = ()) -> dict:
    """One reply per request, whatever arrives: never an exception out of here. `operations` maps an `op` to
    what answers it; a `BadRequest` it raises is `bad_request`, one of `storage_errors` is `storage_error`."""
    if not isinstance(request, dict):
        return {"ok": False, "error": "bad_request", "message": "a request is a JSON object"}
    op = request.get("op")
    operation = operations.get(op) if isinstance(op, str) else None
    if operation is None:
        return {"ok": False, "error": "unknown_op", "message": f"unknown op {op!r}"}
    try:
        return operation(request)
    except BadRequest as error:
        return {"ok": False, "error": "bad_request", "message": str(error)}
    except storage_errors as error:
        return {"ok": False, "error": "storage_error", "message": str(error)}


def control_secret(path: str, process: str) -> str:
    """The data plane's control secret: RELAY_CONTROL_SECRET, else its file (waiting for the data plane to
    create it when both start together)."""
    secret = settings.CONTROL_SECRET.get()
    if secret:
        return secret
    deadline = time.monotonic() + SECRET_WAIT_SECONDS
    while time.monotonic() < deadline:
        if Path(path).exists() and Path(path).read_text().strip():
            return Path(path).read_text().strip()
        time.sleep(0.2)
    raise SystemExit(f"{process}: no control secret: set RELAY_CONTROL_SECRET or start the data plane, which "
                     f"writes {path}")


class ControlServer(socketserver.ThreadingTCPServer):
    """At most MAX_CONNECTIONS connections at once; when all are taken, the oldest that has not yet said
    `hello` makes room (a client that never authenticates cannot lock the control plane out, nor exhaust
    threads and memory: each connection is a thread and up to a request line of buffer)."""

    daemon_threads = True
    request_queue_size = 64  # socketserver's 5 drops a burst's SYNs: each dropped one costs a client 1 s

    def __init__(self, address: tuple[str, int], handler: type[socketserver.BaseRequestHandler]) -> None:
        super().__init__(address, handler)
        self.guard = threading.Lock()
        self.accepted: set[Any] = set()
        self.waiting: dict[Any, float] = {}  # accepted, not yet authenticated, oldest first

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self.guard:
            if len(self.accepted) >= MAX_CONNECTIONS:
                if not self.waiting:
                    return False
                oldest = next(iter(self.waiting))
                self.waiting.pop(oldest)
                self.accepted.discard(oldest)
                with contextlib.suppress(OSError):
                    oldest.shutdown(socket.SHUT_RDWR)  # its handler's read ends; the socket closes there
            self.accepted.add(request)
            self.waiting[request] = time.monotonic()
        return True

    def authenticated(self, request: Any) -> None:
        with self.guard:
            self.waiting.pop(request, None)

    def shutdown_request(self, request: Any) -> None:
        with self.guard:
            self.accepted.discard(request)
            self.waiting.pop(request, None)
        super().shutdown_request(request)


def serve_control(handle: Callable[[Any], dict], host: str, port: int, secret: str,
                  name: str) -> socketserver.ThreadingTCPServer:
    """Answer each request line with `handle(request)`; a connection must say `hello` with the secret first,
    within HELLO_SECONDS and in at most HELLO_LINE_BYTES. Malformed lines get an error reply, never an
    exception out of the loop."""

    class Handler(socketserver.StreamRequestHandler):
        server: ControlServer

        def handle(self) -> None:
            self.connection.settimeout(HELLO_SECONDS)
            authenticated = False
            try:
                while True:
                    limit = MAX_LINE_BYTES if authenticated else HELLO_LINE_BYTES
                    line = self.rfile.readline(limit + 1)
                    if not line:
                        return
                    if len(line) > limit:
                        self._reply({"ok": False, "error": "bad_request",
                                     "message": f"a request line is at most {limit} bytes"
                                                + ("" if authenticated else " before hello")})
                        return
                    try:
                        request = json.loads(line)
                    except ValueError:
                        self._reply({"ok": False, "error": "bad_request", "message": "not JSON"})
                        continue
                    request_id = request.get("id") if isinstance(request, dict) else None
                    if not authenticated:
                        presented = request.get("secret") if isinstance(request, dict) else None
                        if (not isinstance(request, dict) or request.get("op") != "hello"
                                or not isinstance(presented, str)
                                or not hmac.compare_digest(presented.encode(), secret.encode())):
                            self._reply({"ok": False, "id": request_id, "error": "unauthorized",
                                         "message": "send hello with the control secret first"})
                            return
                        authenticated = True
                        self.server.authenticated(self.request)
                        self.connection.settimeout(IDLE_SECONDS)
                    self._reply({**handle(request), "id": request_id})
            except (OSError, TimeoutError):
                return

        def _reply(self, reply: dict) -> None:
            self.wfile.write(json.dumps(reply).encode() + b"\n")

    server = ControlServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server


def serve_metrics(collector: Collector, port: int, host: str = "127.0.0.1") -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    start_http_server(port, addr=host, registry=registry)
    return registry


def stop_child(process: subprocess.Popen | None, grace_seconds: float = 3.0) -> None:
    """SIGTERM (ffmpeg finishes its output, nginx shuts down master and workers), SIGKILL after the grace."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace_seconds)
