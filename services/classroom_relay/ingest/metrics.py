"""Prometheus exporter of the ingest process, on its own registry and port (as the data plane's).

Per classroom ingest: should it be live (`lianxiao_ingest_expected`), is media arriving
(`lianxiao_ingest_connected`), how often ffmpeg had to reconnect; per track: bytes and bit rate in, the
keyframe interval; RTMP publishes refused by reason. The alert rules are deploy/prometheus/rules/ingest.yml.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.classroom_relay import sidecar

PREFIX = "lianxiao_ingest"
_INGEST = ("session", "classroom", "kind")
_TRACK = (*_INGEST, "track", "track_kind")


class IngestCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict], rtmp_up: Callable[[], bool | None]) -> None:
        self.snapshot = snapshot
        self.rtmp_up = rtmp_up

    def collect(self) -> Iterator[Metric]:
        stats = self.snapshot()
        expected = GaugeMetricFamily(f"{PREFIX}_expected", "1 for every classroom ingest of a live session",
                                     labels=_INGEST)
        connected = GaugeMetricFamily(f"{PREFIX}_connected", "1 while media arrives on every track", labels=_INGEST)
        running = GaugeMetricFamily(f"{PREFIX}_process_running", "1 while the repackaging ffmpeg runs", labels=_INGEST)
        reconnects = CounterMetricFamily(f"{PREFIX}_reconnects", "ffmpeg restarts after a failure", labels=_INGEST)
        received = CounterMetricFamily(f"{PREFIX}_received_bytes", "RTP bytes repackaged and forwarded",
                                       labels=_TRACK)
        bitrate = GaugeMetricFamily(f"{PREFIX}_bitrate_bits_per_second", "bit rate in over the last 2 s",
                                    labels=_TRACK)
        keyframes = GaugeMetricFamily(f"{PREFIX}_keyframe_interval_seconds",
                                      "time between the last two keyframes (video)", labels=_TRACK)
        for ingest in stats["ingests"]:
            labels = (ingest["session"], ingest["classroom"], ingest["kind"])
            expected.add_metric(labels, 1)
            connected.add_metric(labels, int(ingest["connected"]))
            running.add_metric(labels, int(ingest["running"]))
            reconnects.add_metric(labels, ingest["reconnects"])
            for track in ingest["tracks"]:
                track_labels = (*labels, track["track"], track["kind"])
                received.add_metric(track_labels, track["bytes_in"])
                bitrate.add_metric(track_labels, track["bits_per_second"])
                if track["keyframe_interval_seconds"] is not None:
                    keyframes.add_metric(track_labels, track["keyframe_interval_seconds"])
        refused = CounterMetricFamily(f"{PREFIX}_publish_refused", "RTMP publishes refused, by reason",
                                      labels=("reason",))
        for reason in ("malformed", "wrong_key", "expired", "not_live", "already_publishing", "wrong_application"):
            refused.add_metric((reason,), stats["refused_publishes"].get(reason, 0))
        yield from (expected, connected, running, reconnects, received, bitrate, keyframes, refused)
        up = self.rtmp_up()
        if up is not None:
            server = GaugeMetricFamily(f"{PREFIX}_rtmp_server_up", "1 while the RTMP server (nginx) runs")
            server.add_metric((), int(up))
            yield server


def serve_metrics(collector: IngestCollector, port: int, host: str = "127.0.0.1") -> CollectorRegistry:
    return sidecar.serve_metrics(collector, port, host)
