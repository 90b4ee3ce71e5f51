"""The snapshot of everything the data plane counted (called under ``Engine.lock``).

The control channel returns it for ``get_stats`` (the control plane's stream health and SDPs read it);
metrics.py turns it into Prometheus metrics.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .admission import key_address
from .allocator import NO_TARGET, layer_rank
from .forwarder import NO_LAYER
from .streams import LAYER_IDLE_SECONDS

if TYPE_CHECKING:
    from .engine import Engine


def snapshot(engine: Engine) -> dict:
    """Everything the relay counted, as plain data: the control channel's get_stats, the metrics exporter."""
    now = time.monotonic()
    sessions = {}
    for session_id, found in engine.streams.sessions.items():
        tracks = {}
        for classroom, track in found.tracks.items():
            layers = sorted(track.layers.values(), key=lambda layer: layer.rate.rate_bytes_per_second)
            received = sum(layer.reception.received for layer in layers)
            expected = sum(layer.reception.expected for layer in layers)
            tracks[classroom] = {
                "bytes_in": sum(layer.bytes_in for layer in layers),
                "packets_in": sum(layer.packets_in for layer in layers),
                "keyframes_in": sum(layer.keyframes_in for layer in layers),
                "loss_ratio": max(0.0, (expected - received) / expected) if expected else 0.0,
                "jitter_seconds": max((layer.reception.jitter_seconds for layer in layers), default=0.0),
                "keyframe_requests_sent": track.keyframe_requests_sent,
                "live": any(now - layer.last_packet_time < LAYER_IDLE_SECONDS for layer in layers),
                "layers": [
                    {
                        "ssrc": layer.ssrc,
                        "rate_bytes_per_second": layer.rate.rate_bytes_per_second,
                        "bytes_in": layer.bytes_in,
                        "packets_in": layer.packets_in,
                        "source": list(key_address(layer.sender_key)),
                    }
                    for layer in layers
                ],
            }
        outputs = []
        for output in found.outputs():
            rates = output.track.layer_rates(now)
            outputs.append(
                {
                    "classroom": output.classroom,
                    "source_classroom": output.source_classroom,
                    "address": list(output.destination),
                    "relay_address": list(output.relay_address),
                    "ssrc": output.forwarder.out_ssrc,
                    "budget_bytes_per_second": output.budget,
                    "send_rate_bytes_per_second": output.send_rate.rate_bytes_per_second,
                    "bytes_out": output.bytes_out,
                    "packets_out": output.packets_out,
                    "current_layer": layer_rank(rates, output.forwarder.layer_ssrc),
                    "current_ssrc": output.forwarder.layer_ssrc
                    if output.forwarder.layer_ssrc != NO_LAYER
                    else None,
                    "target_ssrc": output.target_ssrc if output.target_ssrc != NO_TARGET else None,
                    "layer_switches": output.forwarder.switches,
                    "loss_ratio": output.loss_ratio,
                    "jitter_seconds": output.jitter_seconds,
                    "rtt_seconds": output.rtt_seconds if output.rtt_seconds >= 0 else None,
                    "keyframes_out": output.keyframes_out,
                    "freezes": output.freezes,
                    "nacks_received": output.nacks_received,
                    "retransmissions": output.retransmissions,
                    "nack_misses": output.nack_misses,
                    "plis_received": output.plis_received,
                    "pacer_drops": output.pacer_drops,
                    "send_errors": output.send_errors,
                    "queued_bytes": output.queue.queued_bytes,
                }
            )
        sessions[session_id] = {
            "master": found.master,
            "branches": sorted(found.branches),
            "tracks": tracks,
            "outputs": outputs,
        }
    return {
        "instance": engine.instance,
        "uptime_seconds": time.time() - engine.started_wall,
        "media_address": list(engine.media_address),
        "rtcp_address": list(engine.rtcp_address),
        "gso": engine.gso_enabled,
        "drops": engine.drops.as_dict(),
        "keyframe_requests_forwarded": engine.feedback.keyframe_requests_forwarded,
        "senders": [
            {
                "address": list(key_address(key)),
                "session": sender.session,
                "classroom": sender.classroom,
                "how": sender.how,
                "ssrcs": sorted(sender.ssrcs),
            }
            for key, sender in engine.admission.senders.items()
        ],
        "sessions": sessions,
    }
