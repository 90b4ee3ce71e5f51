"""``python -m services.classroom_relay.ingest --control-port 7080 --metrics-port 9466 --rtmp-port 1935``
(defaults: RELAY_INGEST_CONTROL_PORT, RELAY_INGEST_METRICS_PORT, RELAY_RTMP_PORT)

Runs beside a data plane: nginx-rtmp for classrooms that push, ffmpeg per classroom ingest (RTMP played back
locally, or an RTSP camera pulled), one RTP hop per track into the data plane. Its control channel takes the
data plane's control secret (RELAY_CONTROL_SECRET, else RELAY_CONTROL_SECRET_FILE, which the data plane creates).
"""

from __future__ import annotations

import argparse
import shutil
import sys

from services.classroom_relay import ingest_settings, settings, sidecar

from .control import IngestControl, serve_control
from .metrics import IngestCollector, serve_metrics
from .rtmp_server import APPLICATION, RtmpServer
from .supervisor import Supervisor


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.classroom_relay.ingest", description=__doc__)
    sidecar.add_control_arguments(parser, ingest_settings.CONTROL_PORT.get(), ingest_settings.METRICS_PORT.get())
    parser.add_argument("--rtmp-listen", default="0.0.0.0", help="address nginx-rtmp listens on")
    parser.add_argument("--rtmp-port", type=int, default=ingest_settings.RTMP_PORT.get())
    parser.add_argument("--rtmp-public-url", default=None,
                        help="what classrooms are told to publish to, e.g. rtmp://relay.example.edu.cn:1935/live "
                             "(default: rtmp://<rtmp-listen or 127.0.0.1>:<rtmp-port>/live)")
    parser.add_argument("--no-rtmp", action="store_true", help="RTSP pull only: no RTMP server")
    parser.add_argument("--relay-bind-host", default="127.0.0.1",
                        help="the address the hops send to the data plane from")
    parser.add_argument("--ffmpeg", default=shutil.which("ffmpeg") or "ffmpeg")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    sidecar.start_logging()
    arguments = parse_arguments(argv)
    secret = sidecar.control_secret(arguments.control_secret_file or settings.CONTROL_SECRET_FILE.get(), "relay-ingest")
    rtmp_server: RtmpServer | None = None
    rtmp_url = None
    supervisor = Supervisor(arguments.ffmpeg, None, arguments.relay_bind_host)
    if not arguments.no_rtmp:
        rtmp_server = RtmpServer(supervisor, arguments.rtmp_listen, arguments.rtmp_port)
        rtmp_server.start()
        supervisor.rtmp_play_base = f"rtmp://127.0.0.1:{arguments.rtmp_port}/{APPLICATION}"
        host = "127.0.0.1" if arguments.rtmp_listen in ("0.0.0.0", "") else arguments.rtmp_listen
        rtmp_url = arguments.rtmp_public_url or f"rtmp://{host}:{arguments.rtmp_port}/{APPLICATION}"
    control = serve_control(IngestControl(supervisor, rtmp_url), arguments.control_host, arguments.control_port,
                            secret)
    if arguments.metrics_port:
        serve_metrics(IngestCollector(supervisor.snapshot, lambda: rtmp_server.alive() if rtmp_server else None),
                      arguments.metrics_port, arguments.metrics_host)
    sidecar.on_stop_signal(supervisor.stop)
    print(f"relay-ingest ready control={control.server_address[1]} metrics={arguments.metrics_port} "
          f"rtmp={arguments.rtmp_port if rtmp_server else 0}", flush=True)
    try:
        supervisor.run()
    finally:
        control.shutdown()
        supervisor.stop()
        if rtmp_server is not None:
            rtmp_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
