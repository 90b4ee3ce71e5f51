"""``python -m services.classroom_relay.recorder --control-port 7090 --metrics-port 9467 --root var/recordings``
(defaults: RECORDER_CONTROL_PORT, RECORDER_METRICS_PORT, RECORDINGS_ROOT, RECORDER_MEDIA_HOST/PORTS)

Runs beside a data plane, as its egress: the data plane sends it the master's tracks as plain RTP, ffmpeg
(`-c copy`, one per stream) writes live HLS with fMP4 segments, and each recording becomes MP4 files when it
ends (docs/recording.md). Its control channel takes the data plane's control secret (RELAY_CONTROL_SECRET,
else RELAY_CONTROL_SECRET_FILE, which the data plane creates).
"""

from __future__ import annotations

import argparse
import shutil
import sys

from services.classroom_relay import recorder_settings as rs
from services.classroom_relay import settings, sidecar
from services.common import config
from services.common.storage import FilesystemStorage

from .control import RecorderControl
from .metrics import RecorderCollector
from .supervisor import Supervisor


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.classroom_relay.recorder", description=__doc__)
    sidecar.add_control_arguments(parser, rs.CONTROL_PORT.get(), rs.METRICS_PORT.get())
    parser.add_argument("--media-host", default=rs.MEDIA_HOST.get(), help="where the data plane sends RTP")
    parser.add_argument("--media-ports", type=rs.port_range, default=rs.MEDIA_PORTS.get(), help="lo-hi")
    parser.add_argument("--root", default=config.RECORDINGS_ROOT.get(), help="the recordings' folder")
    parser.add_argument("--control-secret", default=None, help="default: RELAY_CONTROL_SECRET (tests, benchmarks)")
    parser.add_argument("--segment-seconds", type=int, default=rs.SEGMENT_SECONDS.get())
    parser.add_argument("--stall-seconds", type=int, default=rs.STALL_SECONDS.get())
    parser.add_argument("--min-free-bytes", type=int, default=rs.MIN_FREE_BYTES.get())
    parser.add_argument("--low-free-bytes", type=int, default=rs.LOW_FREE_BYTES.get())
    parser.add_argument("--ffmpeg", default=shutil.which("ffmpeg") or "ffmpeg")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    sidecar.start_logging()
    arguments = parse_arguments(argv)
    secret = arguments.control_secret or sidecar.control_secret(
        arguments.control_secret_file or settings.CONTROL_SECRET_FILE.get(), "relay-recorder")
    supervisor = Supervisor(FilesystemStorage(arguments.root), arguments.ffmpeg,
                            segment_seconds=arguments.segment_seconds, stall_seconds=arguments.stall_seconds,
                            min_free_bytes=arguments.min_free_bytes, low_free_bytes=arguments.low_free_bytes)
    control = sidecar.serve_control(
        RecorderControl(supervisor, arguments.media_host, arguments.media_ports).handle,
        arguments.control_host, arguments.control_port, secret, "recorder-control")
    if arguments.metrics_port:
        sidecar.serve_metrics(RecorderCollector(supervisor.snapshot), arguments.metrics_port, arguments.metrics_host)
    sidecar.on_stop_signal(supervisor.request_stop)
    print(f"relay-recorder ready control={control.server_address[1]} metrics={arguments.metrics_port} "
          f"root={supervisor.storage.root}", flush=True)
    try:
        supervisor.run()
    finally:
        control.shutdown()
        supervisor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
