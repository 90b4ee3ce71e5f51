"""Prometheus exporter of the data plane, on its own CollectorRegistry and port.

The loop keeps plain integer counters (a prometheus_client ``inc()`` per packet would take a lock per
packet); this collector turns an engine snapshot into metric families at scrape time.
Naming follows Prometheus conventions: base units, bytes, ``_total`` for counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.link_targets import LINK_TARGETS_BYTES_PER_SECOND

SERVICE = "classroom_relay_dataplane"
PREFIX = "lianxiao_relay"

_STREAM_LABELS = ("service", "session", "classroom", "track", "kind", "source")
_OUTPUT_LABELS = ("service", "session", "classroom", "source_classroom", "track", "kind", "source")


class DataPlaneCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        stats = self.snapshot()
        yield from self._link_targets()
        yield from self._ingress(stats)
        yield from self._egress(stats)
        drops = CounterMetricFamily(
            f"{PREFIX}_dropped_packets", "Packets dropped by the data plane, by reason", labels=("service", "reason")
        )
        for reason, count in stats["drops"].items():
            drops.add_metric((SERVICE, reason), count)
        yield drops
        requests = CounterMetricFamily(
            f"{PREFIX}_keyframe_requests_forwarded", "PLIs sent upstream to senders (throttled)", labels=("service",)
        )
        requests.add_metric((SERVICE,), stats["keyframe_requests_forwarded"])
        yield requests
        up = GaugeMetricFamily(f"{PREFIX}_uptime_seconds", "Seconds since the data plane started", labels=("service",))
        up.add_metric((SERVICE,), stats["uptime_seconds"])
        yield up

    def _link_targets(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            f"{PREFIX}_link_target_bytes_per_second",
            "Bandwidth target of each kind of link (100/25/10 Mbit/s), for dashboards and alerts",
            labels=("service", "link"),
        )
        for link, target in LINK_TARGETS_BYTES_PER_SECOND.items():
            family.add_metric((SERVICE, link), target)
        yield family

    def _ingress(self, stats: dict) -> Iterator[Metric]:
        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=_STREAM_LABELS)

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=_STREAM_LABELS)

        received_bytes = counter("received_bytes", "RTP bytes received from a classroom's sender")
        received_packets = counter("received_packets", "RTP packets received from a classroom's sender")
        keyframes = counter("received_keyframes", "Keyframes received from a classroom's sender")
        requests = counter("keyframe_requests_sent", "Keyframe requests (PLI) sent to a classroom's sender")
        loss = gauge("received_loss_ratio", "Fraction of a sender's packets lost on the way to the relay")
        jitter = gauge("received_jitter_seconds", "Interarrival jitter of a sender's packets at the relay")
        layers = gauge("received_layers", "Simulcast layers a classroom is sending right now")
        live = gauge("sender_live", "1 while a classroom's sender delivers media, 0 otherwise")
        for session_id, session in stats["sessions"].items():
            for track in session["tracks"]:
                labels = (SERVICE, session_id, track["classroom"], track["track"], track["kind"], track["source"])
                received_bytes.add_metric(labels, track["bytes_in"])
                received_packets.add_metric(labels, track["packets_in"])
                keyframes.add_metric(labels, track["keyframes_in"])
                requests.add_metric(labels, track["keyframe_requests_sent"])
                if track["loss_ratio"] is not None:  # nothing received yet: absent, not zero
                    loss.add_metric(labels, track["loss_ratio"])
                if track["jitter_seconds"] is not None:
                    jitter.add_metric(labels, track["jitter_seconds"])
                layers.add_metric(labels, len(track["layers"]))
                live.add_metric(labels, 1.0 if track["live"] else 0.0)
        yield from (received_bytes, received_packets, keyframes, requests, loss, jitter, layers, live)

    def _egress(self, stats: dict) -> Iterator[Metric]:
        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=_OUTPUT_LABELS)

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=_OUTPUT_LABELS)

        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "bytes_out": counter("sent_bytes", "RTP bytes sent to a receiving classroom (retransmissions included)"),
            "packets_out": counter("sent_packets", "RTP packets sent to a receiving classroom"),
            "keyframes_out": counter("sent_keyframes", "Keyframes forwarded to a receiving classroom"),
            "freezes": counter("freezes", "Times a receiving classroom got no media for more than 1 s"),
            "nacks_received": counter("nacks", "Packets a receiving classroom asked to be retransmitted (NACK)"),
            "retransmissions": counter("retransmissions", "NACKed packets answered from the cache"),
            "plis_received": counter("plis", "Keyframe requests (PLI/FIR) from a receiving classroom"),
            "pacer_drops": counter("pacer_dropped_packets", "Packets dropped because a budget was exhausted"),
            "layer_switches": counter("layer_switches", "Simulcast layer switches for a receiving classroom"),
            "current_layer": gauge("current_layer", "Simulcast layer forwarded (0 = lowest bitrate, -1 = none)"),
            "loss_ratio": gauge("loss_ratio", "Fraction lost, from the receiving classroom's receiver reports"),
            "jitter_seconds": gauge("jitter_seconds", "Interarrival jitter reported by the receiving classroom"),
            "rtt_seconds": gauge("rtt_seconds", "Round-trip time relay ↔ receiving classroom (from RTCP)"),
            "rtcp_refused": counter("rtcp_refused", "RTCP datagrams refused on this output's socket (wrong source)"),
            "budget_bytes_per_second": gauge("budget_bytes_per_second", "Bandwidth budget of this stream"),
            "send_rate_bytes_per_second": gauge("send_rate_bytes_per_second", "Bytes per second sent, last second"),
            "budget_used": gauge("budget_used_ratio", "Send rate divided by the budget"),
        }
        for session_id, session in stats["sessions"].items():
            for output in session["outputs"]:
                labels = (SERVICE, session_id, output["classroom"], output["source_classroom"], output["track"],
                          output["kind"], output["source"])
                for field, family in families.items():
                    if field == "budget_used":
                        budget = output["budget_bytes_per_second"]
                        value = output["send_rate_bytes_per_second"] / budget if budget else 0.0
                    else:
                        value = output[field]
                    if value is None:
                        continue  # e.g. no RTT before the first receiver report: absent, not zero
                    family.add_metric(labels, float(value))
        yield from families.values()


def serve_metrics(snapshot: Callable[[], dict], port: int, host: str = "127.0.0.1") -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(DataPlaneCollector(snapshot))
    start_http_server(port, addr=host, registry=registry)
    return registry
