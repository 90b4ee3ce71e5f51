"""Stream allocation: which simulcast layer each output follows.

Per output, pick the highest layer whose measured bitrate fits the output's budget. A lower layer is
taken as soon as the current one stops fitting; a higher one only when it fits with extra room, so an
output does not flap between layers whose rates sit near its budget. The switch itself happens later,
at the next keyframe of the target layer (see ``Engine``), which is why this module only *decides*.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .streams import Output

FIT_FRACTION = 0.9  # a layer fits when it needs at most 90 % of the budget (keyframe bursts, RTCP)
UPGRADE_FRACTION = 0.75  # ...and is worth moving up to only below 75 %
NO_TARGET = -1


class RateMeter:
    """Bytes per second over the last ``window_seconds``, from a byte counter sampled periodically."""

    __slots__ = ("rate_bytes_per_second", "samples", "window_seconds")

    def __init__(self, window_seconds: float = 1.0) -> None:
        self.window_seconds = window_seconds
        self.samples: deque[tuple[float, int]] = deque()
        self.rate_bytes_per_second = 0.0

    def sample(self, now: float, total_bytes: int) -> float:
        self.samples.append((now, total_bytes))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_seconds:
            self.samples.popleft()
        oldest_time, oldest_bytes = self.samples[0]
        elapsed = now - oldest_time
        if elapsed > 0:
            self.rate_bytes_per_second = (total_bytes - oldest_bytes) / elapsed
        return self.rate_bytes_per_second


def choose_layer(layer_rates: list[tuple[int, float]], budget_bytes_per_second: float, current_ssrc: int) -> int:
    """SSRC to follow. ``layer_rates`` holds (ssrc, measured bytes/s) of the active layers, any order.

    Falls back to the lowest layer when nothing fits: the pacer still holds the output to its budget,
    and the lowest layer degrades the picture least.
    """
    active = sorted((rate, ssrc) for ssrc, rate in layer_rates if rate > 0)
    if not active:
        return NO_TARGET
    chosen = active[0][1]
    for rate, ssrc in active:
        limit = FIT_FRACTION if ssrc == current_ssrc else UPGRADE_FRACTION
        # A layer at or below the current one only has to fit; a layer above it must fit with room.
        if rate <= budget_bytes_per_second * FIT_FRACTION and (
            rate <= budget_bytes_per_second * limit or _is_not_above(ssrc, current_ssrc, active)
        ):
            chosen = ssrc
    return chosen


def _is_not_above(ssrc: int, current_ssrc: int, active: list[tuple[float, int]]) -> bool:
    ranks = {layer_ssrc: rank for rank, (_rate, layer_ssrc) in enumerate(active)}
    current_rank = ranks.get(current_ssrc, -1)
    return ranks[ssrc] <= current_rank


def layer_rank(layer_rates: list[tuple[int, float]], ssrc: int) -> int:
    """0 for the lowest-bitrate layer, 1 for the next, …; -1 if not active. For the current-layer gauge."""
    ordered = [layer_ssrc for _rate, layer_ssrc in sorted((rate, s) for s, rate in layer_rates)]
    return ordered.index(ssrc) if ssrc in ordered else -1


AUDIO_HEADROOM = 2.0  # an audio output may burst to twice its measured rate (e.g. Opus DTX ending)
MIN_AUDIO_BYTES_PER_SECOND = 16_000  # 128 kbit/s: the pacer must never clip speech


def allocate_member(outputs: list[Output], budget: float, now: float) -> tuple[float, float]:
    """Share one receiving member's downlink ``budget`` over its outputs: audio first, then video.

    Audio outputs follow their track's newest live SSRC (never a layer choice) and are counted at their
    measured rate. What is left goes to video: every video output first gets its lowest layer, then, in
    the members' declared order, each is upgraded to the highest layer that fits what remains. Each
    output's pacer budget is its layer's rate plus an equal share of what no layer needs (room for
    keyframes and retransmissions). Returns (audio, video) bytes per second allocated.
    """
    audio = [output for output in outputs if output.track.is_audio]
    video = [output for output in outputs if not output.track.is_audio]
    audio_total = 0.0
    for output in audio:
        newest = output.track.newest_layer(now)
        output.target_ssrc = newest.ssrc if newest is not None else output.forwarder.layer_ssrc
        rate = max((rate for ssrc, rate in output.track.layer_rates(now) if ssrc == output.target_ssrc), default=0.0)
        audio_total += rate
        output.set_budget(min(budget, max(rate * AUDIO_HEADROOM, MIN_AUDIO_BYTES_PER_SECOND)))
    remaining = max(0.0, budget - audio_total)
    chosen: list[tuple[Output, list[tuple[int, float]], float]] = []
    lowest_total = 0.0
    for output in video:
        rates = [(ssrc, rate) for ssrc, rate in output.track.layer_rates(now) if rate > 0]
        lowest = min((rate for _ssrc, rate in rates), default=0.0)
        lowest_total += lowest
        chosen.append((output, rates, lowest))
    spare = remaining * FIT_FRACTION - lowest_total
    video_total = 0.0
    rates_needed: list[float] = []
    for output, rates, lowest in chosen:
        if not rates:
            rates_needed.append(0.0)
            continue
        # The most this output could use: its lowest layer plus all that is still spare.
        target = choose_layer(rates, (lowest + max(0.0, spare)) / FIT_FRACTION, output.forwarder.layer_ssrc)
        rate = dict(rates)[target]
        spare -= rate - lowest
        output.target_ssrc = target
        rates_needed.append(rate)
        video_total += rate
    unused = max(0.0, remaining - video_total)
    share = unused / len(chosen) if chosen else 0.0
    for (output, _rates, _lowest), rate in zip(chosen, rates_needed, strict=True):
        if rate <= 0:
            output.set_budget(max(1.0, remaining))  # nothing measured yet: let a first keyframe through
        elif video_total > remaining:
            output.set_budget(max(1.0, remaining * rate / video_total))  # overloaded: pace in proportion
        else:
            output.set_budget(rate + share)
    return audio_total, video_total
