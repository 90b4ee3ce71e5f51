"""Per-output token bucket, refilled once per batch.

The bucket holds at most ``burst_seconds`` of budget, so over any window of T seconds an output sends
at most budget × (T + burst_seconds) bytes. Packets that do not fit wait in a short queue (they are
references into the packet ring, not copies); when that queue would hold more than ``max_delay``
seconds of budget, the newest packet is dropped and counted instead.
"""

from __future__ import annotations

from collections import deque


class TokenBucket:
    __slots__ = ("burst_bytes", "last_refill", "rate_bytes_per_second", "tokens")

    def __init__(self, rate_bytes_per_second: float, burst_seconds: float = 0.05, now: float = 0.0) -> None:
        self.rate_bytes_per_second = float(rate_bytes_per_second)
        self.burst_bytes = max(1500.0, rate_bytes_per_second * burst_seconds)
        self.tokens = self.burst_bytes
        self.last_refill = now

    def set_rate(self, rate_bytes_per_second: float, burst_seconds: float = 0.05) -> None:
        self.rate_bytes_per_second = float(rate_bytes_per_second)
        self.burst_bytes = max(1500.0, rate_bytes_per_second * burst_seconds)
        self.tokens = min(self.tokens, self.burst_bytes)

    def refill(self, now: float) -> None:
        elapsed = now - self.last_refill
        if elapsed > 0:
            self.tokens = min(self.burst_bytes, self.tokens + elapsed * self.rate_bytes_per_second)
            self.last_refill = now

    def try_take(self, size: int) -> bool:
        if self.tokens >= size:
            self.tokens -= size
            return True
        return False

    def seconds_until(self, size: int) -> float:
        missing = size - self.tokens
        return 0.0 if missing <= 0 else missing / self.rate_bytes_per_second


class PacedQueue:
    """Packets waiting for tokens: (slot, serial, out_sequence, out_timestamp, size)."""

    __slots__ = ("entries", "max_queued_bytes", "queued_bytes")

    def __init__(self, rate_bytes_per_second: float, max_delay_seconds: float = 0.2) -> None:
        self.entries: deque[tuple[int, int, int, int, int]] = deque()
        self.queued_bytes = 0
        self.max_queued_bytes = rate_bytes_per_second * max_delay_seconds

    def set_rate(self, rate_bytes_per_second: float, max_delay_seconds: float = 0.2) -> None:
        self.max_queued_bytes = rate_bytes_per_second * max_delay_seconds

    def offer(self, slot: int, serial: int, out_sequence: int, out_timestamp: int, size: int) -> bool:
        if self.queued_bytes + size > self.max_queued_bytes:
            return False
        self.entries.append((slot, serial, out_sequence, out_timestamp, size))
        self.queued_bytes += size
        return True

    def __len__(self) -> int:
        return len(self.entries)

    def peek_size(self) -> int:
        return self.entries[0][4]

    def pop(self) -> tuple[int, int, int, int, int]:
        entry = self.entries.popleft()
        self.queued_bytes -= entry[4]
        return entry

    def clear(self) -> None:
        self.entries.clear()
        self.queued_bytes = 0
