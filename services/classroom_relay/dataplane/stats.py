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
    from .streams import EngineConfig, Output, Track


def snapshot(engine: Engine) -> dict:
    """Everything the relay counted, as plain data: the control channel's get_stats, the metrics exporter."""
    now = time.monotonic()
    sessions = {}
    for session_id, found in engine.streams.sessions.items():
        tracks = [_track_stats(track, engine, now) for track in found.tracks.values()]
        outputs = [_output_stats(output, now) for output in found.outputs()]
        sessions[session_id] = {
            "master": found.master,
            "members": sorted(found.members),
            "branches": sorted(classroom for classroom in found.members if classroom != found.master),
            "tracks": tracks,
            "outputs": outputs,
            "receivers": {
                classroom: {
                    "budget_bytes_per_second": member.budget,
                    "audio_bytes_per_second": member.audio_bytes_per_second,
                    "video_bytes_per_second": member.video_bytes_per_second,
                }
                for classroom, member in found.members.items()
                if member.receive_host is not None
            },
        }
    return {
        "instance": engine.instance,
        "uptime_seconds": time.time() - engine.started_wall,
        "media_address": list(engine.media_address),
        "rtcp_address": list(engine.rtcp_address),
        "gso": engine.gso_enabled,
        "drops": engine.drops.as_dict(),
        "keyframe_requests_forwarded": engine.feedback.keyframe_requests_forwarded,
        "sender_handovers": engine.admission.handovers,
        "media_ports": list(engine.config.media_ports) if engine.config.media_ports else None,
        "limits": limits(engine.config),
        "senders": [
            {
                "address": list(key_address(key)),
                "session": sender.session,
                "classroom": sender.classroom,
                "track": sender.track,
                "layer": sender.layer,
                "how": sender.how,
                "ssrcs": sorted(sender.ssrcs),
            }
            for key, sender in engine.admission.senders.items()
        ],
        "sessions": sessions,
    }


def limits(config: EngineConfig) -> dict[str, int]:
    return {
        "max_sessions": config.max_sessions,
        "max_members_per_session": config.max_members_per_session,
        "max_outputs": config.max_outputs,
    }


def _track_stats(track: Track, engine: Engine, now: float) -> dict:
    layers = sorted(track.layers.values(), key=lambda layer: layer.rate.rate_bytes_per_second)
    received = sum(layer.reception.received for layer in layers)
    expected = sum(layer.reception.expected for layer in layers)
    senders = [
        list(key_address(key))
        for (session, classroom, name, _layer), key in sorted(engine.admission.track_sender.items())
        if (session, classroom, name) == (track.session, track.classroom, track.name)
    ]
    return {
        "classroom": track.classroom,
        "track": track.name,
        "kind": track.kind,
        "source": track.spec.source,
        "clock_rate": track.clock_rate,
        "bytes_in": sum(layer.bytes_in for layer in layers),
        "packets_in": sum(layer.packets_in for layer in layers),
        "keyframes_in": sum(layer.keyframes_in for layer in layers),
        "loss_ratio": max(0.0, (expected - received) / expected) if expected else None,
        "jitter_seconds": max((layer.reception.jitter_seconds for layer in layers), default=None),
        "keyframe_requests_sent": track.keyframe_requests_sent,
        "live": any(now - layer.last_packet_time < LAYER_IDLE_SECONDS for layer in layers),
        "senders": senders,
        "layers": [
            {
                "ssrc": layer.ssrc,
                "rate_bytes_per_second": layer.rate.rate_bytes_per_second,
                "bytes_in": layer.bytes_in,
                "packets_in": layer.packets_in,
                "frame_ticks": layer.frame_ticks,
                "source": list(key_address(layer.sender_key)),
            }
            for layer in layers
        ],
    }


def _output_stats(output: Output, now: float) -> dict:
    rates = output.track.layer_rates(now)
    forwarder = output.forwarder
    return {
        "classroom": output.classroom,
        "source_classroom": output.source_classroom,
        "track": output.track.name,
        "kind": output.track.kind,
        "source": output.track.spec.source,
        "address": list(output.destination),
        "relay_address": list(output.relay_address),
        "ssrc": forwarder.out_ssrc,
        "budget_bytes_per_second": output.budget,
        "send_rate_bytes_per_second": output.send_rate.rate_bytes_per_second,
        "bytes_out": output.bytes_out,
        "packets_out": output.packets_out,
        "current_layer": layer_rank(rates, forwarder.layer_ssrc),
        "current_ssrc": forwarder.layer_ssrc if forwarder.layer_ssrc != NO_LAYER else None,
        "target_ssrc": output.target_ssrc if output.target_ssrc != NO_TARGET else None,
        "layer_switches": forwarder.switches,
        "reported": output.loss_ratio is not None,
        "loss_ratio": output.loss_ratio,
        "jitter_seconds": output.jitter_seconds,
        "rtt_seconds": output.rtt_seconds,
        "rtcp_from": list(key_address(output.rtcp_key)) if output.rtcp_key else None,
        "rtcp_refused": output.rtcp_refused,
        "keyframes_out": output.keyframes_out,
        "first_keyframe_after_seconds": (
            output.first_keyframe_time - output.joined_time if output.first_keyframe_time >= 0 else None
        ),
        "freezes": output.freezes,
        "nacks_received": output.nacks_received,
        "retransmissions": output.retransmissions,
        "nack_misses": output.nack_misses,
        "plis_received": output.plis_received,
        "pacer_drops": output.pacer_drops,
        "send_errors": output.send_errors,
        "queued_bytes": output.queue.queued_bytes,
    }
