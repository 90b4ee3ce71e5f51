"""Prometheus exporter of the recorder, on its own registry and port (as the data plane's and the ingest's).

Recordings running, segments and bytes written, gaps by reason, ffmpeg restarts, recordings refused by
reason, segment-to-playlist latency, and the disk: free and total bytes and the guard (0 ok, 1 low, 2 full).
The alert rules are deploy/prometheus/rules/recorder.yml.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .supervisor import LATENCY_BUCKETS

PREFIX = "lianxiao_recorder"
GUARD_LEVELS = {"ok": 0, "low": 1, "full": 2}
GAP_REASONS = ("media_stopped", "ffmpeg_exit", "stall", "recorder_restart", "source_changed")


class RecorderCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        stats = self.snapshot()
        counters = stats["counters"]
        active = GaugeMetricFamily(f"{PREFIX}_recordings_active", "recordings being written now")
        active.add_metric((), stats["active"])
        segments = CounterMetricFamily(f"{PREFIX}_segments_written", "HLS segments written", labels=("stream",))
        for stream, count in sorted(counters["segments"].items()):
            segments.add_metric((stream,), count)
        written = CounterMetricFamily(f"{PREFIX}_written_bytes", "bytes of HLS segments written")
        written.add_metric((), counters["bytes"])
        gaps = CounterMetricFamily(f"{PREFIX}_gaps", "gaps in recordings (a part ended early), by reason",
                                   labels=("reason",))
        for reason in sorted(set(GAP_REASONS) | set(counters["gaps"])):
            gaps.add_metric((reason,), counters["gaps"].get(reason, 0))
        restarts = CounterMetricFamily(f"{PREFIX}_ffmpeg_restarts", "ffmpeg runs started after an earlier one ended")
        restarts.add_metric((), counters["restarts"])
        refused = CounterMetricFamily(f"{PREFIX}_refused", "recordings refused, by reason", labels=("reason",))
        for reason in sorted({"disk_full", "finished"} | set(counters["refused"])):
            refused.add_metric((reason,), counters["refused"].get(reason, 0))
        latency = HistogramMetricFamily(f"{PREFIX}_playlist_latency_seconds",
                                        "a segment complete on disk → listed in the recording's playlist")
        cumulative = [(str(bound), count) for bound, count in zip(LATENCY_BUCKETS, counters["latency_buckets"],
                                                                  strict=True)]
        latency.add_metric((), [*cumulative, ("+Inf", counters["latency_count"])], counters["latency_sum"])
        free = GaugeMetricFamily(f"{PREFIX}_disk_free_bytes", "free bytes on the recordings' filesystem")
        free.add_metric((), stats["storage"]["free_bytes"])
        total = GaugeMetricFamily(f"{PREFIX}_disk_total_bytes", "size of the recordings' filesystem")
        total.add_metric((), stats["storage"]["total_bytes"])
        guard = GaugeMetricFamily(f"{PREFIX}_disk_guard", "0 ok, 1 low (RECORDER_LOW_FREE_BYTES), 2 full "
                                                          "(RECORDER_MIN_FREE_BYTES: recording stopped)")
        guard.add_metric((), GUARD_LEVELS[stats["guard"]])
        yield from (active, segments, written, gaps, restarts, refused, latency, free, total, guard)
