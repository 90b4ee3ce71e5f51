"""``python -m services.classroom_relay.dataplane --media-port 5004 --control-port 7070 --metrics-port 9464``

The control channel listens on 127.0.0.1 unless ``--control-host`` says otherwise (in Kubernetes the
central classroom_relay service reaches each pod's control port; a NetworkPolicy admits only it). It is
always authenticated: RELAY_CONTROL_SECRET from the environment (never on the command line, where `ps`
shows it), else the secret in ``--control-secret-file`` (RELAY_CONTROL_SECRET_FILE, default
``.run/relay-control.secret``), generated there with mode 0600 when the file does not exist; the control
plane reads the same file. Every UDP socket is bound inside ``--media-ports`` (RELAY_MEDIA_PORTS) when given.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import signal
import sys
from pathlib import Path

from services.classroom_relay import settings

from .control import serve_control
from .engine import Engine, EngineConfig
from .metrics import serve_metrics
from .ports import parse_port_range


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.classroom_relay.dataplane", description=__doc__)
    parser.add_argument("--media-host", default=settings.MEDIA_HOST.get())
    parser.add_argument("--media-port", type=int, default=settings.MEDIA_PORT.get())
    parser.add_argument("--rtcp-port", type=int, default=0, help="default: media port + 1")
    parser.add_argument("--control-port", type=int, default=settings.CONTROL_PORT.get())
    parser.add_argument(
        "--control-host", default=settings.CONTROL_HOST.get(),
        help="address the TCP control channel listens on (default 127.0.0.1)",
    )
    parser.add_argument("--control-socket", default=None, help="Unix socket path instead of the TCP port")
    parser.add_argument("--metrics-port", type=int, default=settings.METRICS_PORT.get())
    parser.add_argument("--metrics-host", default="127.0.0.1")
    parser.add_argument(
        "--control-secret-file", default=settings.CONTROL_SECRET_FILE.get(),
        help="file holding the control secret; created with mode 0600 if missing",
    )
    parser.add_argument(
        "--media-ports", default=settings.MEDIA_PORTS.get() or None,
        help="LOW-HIGH: every UDP socket (media, RTCP, one per output) is bound inside this range",
    )
    parser.add_argument("--max-sessions", type=int, default=256)
    parser.add_argument("--max-members", type=int, default=256, help="members per session")
    parser.add_argument("--max-outputs", type=int, default=4096)
    parser.add_argument("--max-connections", type=int, default=8, help="control connections at once")
    parser.add_argument("--ring-slots", type=int, default=8192, help="packet ring / NACK cache size")
    parser.add_argument("--no-gso", action="store_true", help="send one datagram per system call")
    parser.add_argument(
        "--busy-poll-us", type=float, default=0.0,
        help="while media arrives faster than this, poll instead of sleeping between packets (e.g. 100; "
        "default 0: never; costs idle CPU for ~30 µs less latency per wake-up)",
    )  # fmt: skip
    parser.add_argument("--cpu", type=int, default=None, help="pin the loop to this CPU")
    return parser.parse_args(argv)


def control_secret(path: str) -> str:
    """RELAY_CONTROL_SECRET, else the secret in ``path``, else a new one written there (0600, directory 0700)."""
    from_environment = settings.CONTROL_SECRET.get()
    if from_environment:
        return from_environment
    secret_path = Path(path)
    if secret_path.exists():
        secret = secret_path.read_text().strip()
        if secret:
            return secret
    secret_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    temporary = secret_path.with_name(f".{secret_path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret + "\n")
    os.replace(temporary, secret_path)  # atomic: a reader sees no file or the whole secret
    return secret


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return host == "localhost"


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.cpu is not None:
        os.sched_setaffinity(0, {arguments.cpu})
    try:
        media_ports = parse_port_range(arguments.media_ports)
    except ValueError as error:
        print(f"relay-dataplane: {error}", file=sys.stderr, flush=True)
        return 2
    engine = Engine(
        EngineConfig(
            media_host=arguments.media_host,
            media_port=arguments.media_port,
            rtcp_port=arguments.rtcp_port,
            ring_slots=arguments.ring_slots,
            busy_poll_seconds=max(0.0, arguments.busy_poll_us) / 1e6,
            use_gso=not arguments.no_gso,
            media_ports=media_ports,
            max_sessions=arguments.max_sessions,
            max_members_per_session=arguments.max_members,
            max_outputs=arguments.max_outputs,
        )
    )
    secret = control_secret(arguments.control_secret_file)
    if not arguments.control_socket and not _is_loopback(arguments.control_host):
        print(f"relay-dataplane: control channel on {arguments.control_host}; authenticated, but keep a network "
              "policy in front of it too", file=sys.stderr, flush=True)
    control = serve_control(
        engine, port=arguments.control_port, unix_path=arguments.control_socket, host=arguments.control_host,
        secret=secret, max_connections=arguments.max_connections,
    )
    if arguments.metrics_port:
        serve_metrics(engine.snapshot_locked, arguments.metrics_port, arguments.metrics_host)

    def request_stop(_signal: int, _frame: object) -> None:
        engine.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    media_host, media_port = engine.media_address
    control_address = control.server_address  # a Unix socket's path, or (host, port)
    # One machine-readable line so supervisors and tests learn the bound ports (useful with port 0).
    print(
        f"relay-dataplane ready media={media_host}:{media_port} rtcp={engine.rtcp_address[1]} "
        f"control={control_address[1] if isinstance(control_address, tuple) else control_address} "
        f"metrics={arguments.metrics_port} gso={int(engine.gso_enabled)}",
        flush=True,
    )
    try:
        engine.run()
    finally:
        control.shutdown()
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
