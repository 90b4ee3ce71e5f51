"""Layer choice against budgets, rate measurement, token bucket and paced queue."""

from __future__ import annotations

import pytest

from services.classroom_relay.dataplane.allocator import NO_TARGET, RateMeter, choose_layer, layer_rank
from services.classroom_relay.dataplane.pacer import PacedQueue, TokenBucket

LOW, MID, HIGH = 1, 2, 3
RATES = [(HIGH, 500_000.0), (LOW, 40_000.0), (MID, 150_000.0)]


@pytest.mark.parametrize(
    ("budget", "current", "expected"),
    [
        (1_250_000, NO_TARGET, HIGH),  # 10 Mbit/s fits everything
        (200_000, NO_TARGET, MID),  # 150 kB/s ≤ 0.75 × 200 kB/s
        (60_000, HIGH, LOW),  # drop at once when the current layer no longer fits
        (10_000, MID, LOW),  # nothing fits: lowest, the pacer still holds the budget
        (180_000, MID, MID),  # current stays while it fits (150 ≤ 0.9 × 180)
        (180_000, LOW, LOW),  # ... but nobody moves *up* to it without room (150 > 0.75 × 180)
    ],
)
def test_choose_layer(budget: float, current: int, expected: int) -> None:
    assert choose_layer(RATES, budget, current) == expected


def test_no_active_layers_means_no_target() -> None:
    assert choose_layer([(LOW, 0.0)], 1e6, NO_TARGET) == NO_TARGET
    assert choose_layer([], 1e6, NO_TARGET) == NO_TARGET


def test_layer_rank() -> None:
    assert [layer_rank(RATES, ssrc) for ssrc in (LOW, MID, HIGH, 99)] == [0, 1, 2, -1]


def test_rate_meter_over_a_sliding_window() -> None:
    meter = RateMeter(window_seconds=1.0)
    total = 0
    for step in range(10):
        total += 50_000
        meter.sample(step * 0.5, total)
    assert meter.rate_bytes_per_second == pytest.approx(100_000)


def test_token_bucket_holds_a_rate_over_time() -> None:
    bucket = TokenBucket(100_000, burst_seconds=0.05, now=0.0)
    sent = 0
    now = 0.0
    for _ in range(2000):  # 2 s in 1 ms steps, offering far more than the budget
        now += 0.001
        bucket.refill(now)
        while bucket.try_take(1200):
            sent += 1200
    assert sent <= 100_000 * 2 + bucket.burst_bytes
    assert sent >= 100_000 * 2 * 0.95
    assert bucket.seconds_until(1200) > 0


def test_paced_queue_is_bounded_by_delay() -> None:
    queue = PacedQueue(10_000, max_delay_seconds=0.2)  # at most 2 000 bytes waiting
    assert queue.offer(1, 1, 1, 1, 1200)
    assert not queue.offer(2, 2, 2, 2, 1200)
    assert len(queue) == 1 and queue.peek_size() == 1200
    assert queue.pop() == (1, 1, 1, 1, 1200)
    assert queue.queued_bytes == 0


def _track_with_layers(kind: str, name: str, rates: dict[int, float], now: float):
    from services.classroom_relay.dataplane.streams import Layer, Track, TrackSpec

    track = Track("s1", "master", TrackSpec(name, kind, name, 48_000 if kind == "audio" else 90_000))
    for ssrc, rate in rates.items():
        layer = track.layers[ssrc] = Layer(ssrc, 0, track)
        layer.rate.rate_bytes_per_second = rate
        layer.last_packet_time = layer.first_packet_time = now
    return track


def test_audio_first_then_video_layers_within_what_is_left() -> None:
    import socket
    import time

    from services.classroom_relay.dataplane.allocator import allocate_member
    from services.classroom_relay.dataplane.streams import EngineConfig, Output

    now = time.monotonic()
    audio = _track_with_layers("audio", "audio", {10: 8_000.0}, now)
    camera = _track_with_layers("video", "camera", dict(RATES), now)
    courseware = _track_with_layers("video", "courseware", {20: 30_000.0, 21: 100_000.0}, now)
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    outputs = [
        Output("s1", "branch", track, ("127.0.0.1", 9), 1.0, EngineConfig(), now, sock)
        for track, sock in zip((audio, camera, courseware), sockets, strict=True)
    ]
    # 200 kB/s: audio's 8 kB/s first; of the 192 left (172.8 usable) both lowest layers (40 + 30); the 102.8
    # spare cannot lift the camera to MID (+110) but lifts the courseware to 21 (+70).
    audio_total, video_total = allocate_member(outputs, 200_000.0, now)
    assert audio_total == 8_000.0
    assert outputs[0].target_ssrc == 10 and outputs[0].budget >= 16_000
    assert outputs[1].target_ssrc == LOW
    assert outputs[2].target_ssrc == 21
    assert video_total == 40_000.0 + 100_000.0
    assert sum(output.budget for output in outputs[1:]) <= 200_000.0 - audio_total + 1e-6
    # A receiver whose budget is all audio still gets its audio, and the lowest video layers are paced.
    allocate_member(outputs, 20_000.0, now)
    assert outputs[0].target_ssrc == 10 and outputs[0].budget == 16_000.0
    for sock in sockets:
        sock.close()
