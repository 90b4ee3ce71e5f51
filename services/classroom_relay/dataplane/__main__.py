"""``python -m services.classroom_relay.dataplane --media-port 5004 --control-port 7070 --metrics-port 9464``

The control channel listens on 127.0.0.1 unless ``--control-host`` says otherwise (in Kubernetes the
central classroom_relay service reaches each pod's control port; a NetworkPolicy admits only it). Set
RELAY_CONTROL_SECRET in the environment (never on the command line, where `ps` shows it) to make every
control connection authenticate with it first.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys

from services.classroom_relay import settings

from .control import serve_control
from .engine import Engine, EngineConfig
from .metrics import serve_metrics


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
    parser.add_argument("--ring-slots", type=int, default=8192, help="packet ring / NACK cache size")
    parser.add_argument("--no-gso", action="store_true", help="send one datagram per system call")
    parser.add_argument("--cpu", type=int, default=None, help="pin the loop to this CPU")
    return parser.parse_args(argv)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return host == "localhost"


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.cpu is not None:
        os.sched_setaffinity(0, {arguments.cpu})
    engine = Engine(
        EngineConfig(
            media_host=arguments.media_host,
            media_port=arguments.media_port,
            rtcp_port=arguments.rtcp_port,
            ring_slots=arguments.ring_slots,
            use_gso=not arguments.no_gso,
        )
    )
    control_secret = settings.CONTROL_SECRET.get()
    if not arguments.control_socket and not _is_loopback(arguments.control_host) and control_secret is None:
        print(f"relay-dataplane: control channel on {arguments.control_host} without RELAY_CONTROL_SECRET; "
              "only the network policy keeps others from it", file=sys.stderr, flush=True)
    control = serve_control(
        engine, port=arguments.control_port, unix_path=arguments.control_socket, host=arguments.control_host,
        secret=control_secret,
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
