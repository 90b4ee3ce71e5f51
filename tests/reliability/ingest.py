"""A school's client as the contract wants it: batches with its own ids, retried unchanged on 503.

The client gives every activity its id, so a retry after a 503, a timeout or a cut connection can
never create a second activity: the service answers `duplicate` for what it already stored.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import eventlet
import requests

RETRYABLE = {502, 503, 504}


def activities(teacher_ids: list[int], count: int, tag: str) -> list[dict[str, Any]]:
    """`count` valid blog posts spread over the teachers, each with a fresh client id."""
    return [
        {
            "id": str(uuid.uuid4()), "kind": "blog_post", "teacher_id": teacher_ids[index % len(teacher_ids)],
            "occurred_at": "2025-03-05T20:00:00+08:00",
            "details": {"title": f"{tag} 教研随笔 {index}", "word_count": 100 + index % 900},
        }
        for index in range(count)
    ]


@dataclass
class Ledger:
    """What the client saw: which ids the gateway confirmed, every status, the time without service."""

    sent: set[str] = field(default_factory=set)
    confirmed: set[str] = field(default_factory=set)  # answered accepted or duplicate in a 2xx
    rejected: list[dict[str, Any]] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    duplicates: int = 0  # items answered "duplicate": an earlier attempt had stored them
    retries: int = 0
    server_errors: int = 0
    unconfirmed_batches: int = 0
    failing_since: float | None = None
    outage_seconds: float = 0.0
    longest_outage_seconds: float = 0.0

    def failed(self, now: float) -> None:
        if self.failing_since is None:
            self.failing_since = now

    def succeeded(self, now: float) -> None:
        if self.failing_since is not None:
            window = now - self.failing_since
            self.outage_seconds += window
            self.longest_outage_seconds = max(self.longest_outage_seconds, window)
            self.failing_since = None


def post_batch(url: str, token: str, batch: list[dict[str, Any]], ledger: Ledger, deadline: float) -> None:
    """Send one batch until the gateway confirms it (or the deadline passes); same body every time."""
    headers = {"Authorization": f"Bearer {token}"}
    ledger.sent.update(item["id"] for item in batch)
    while time.monotonic() < deadline:
        ledger.attempts += 1
        try:
            response = requests.post(f"{url}/v1/activities/batch", json={"activities": batch}, headers=headers,
                                     timeout=40)
        except requests.RequestException as error:  # gateway restarting, connection cut
            ledger.statuses[type(error).__name__] += 1
            ledger.failed(time.monotonic())
            ledger.retries += 1
            eventlet.sleep(0.3)
            continue
        ledger.statuses[str(response.status_code)] += 1
        if response.status_code == 200:
            ledger.succeeded(time.monotonic())
            for result in response.json()["results"]:
                if result["status"] in ("accepted", "duplicate"):
                    ledger.confirmed.add(result["id"])
                    ledger.duplicates += result["status"] == "duplicate"
                else:
                    ledger.rejected.append(result)
            return
        ledger.failed(time.monotonic())
        if response.status_code >= 500 and response.status_code not in RETRYABLE:
            ledger.server_errors += 1
        elif response.status_code not in RETRYABLE and response.status_code != 429:
            raise AssertionError(f"batch refused: {response.status_code} {response.text[:500]}")
        ledger.retries += 1
        eventlet.sleep(float(response.headers.get("Retry-After", "0.3")) if response.status_code == 429 else 0.3)
    ledger.unconfirmed_batches += 1


def ingest(url: str, token: str, items: list[dict[str, Any]], *, batch_size: int = 100, concurrency: int = 4,
           timeout: float = 240.0) -> Ledger:
    """Send every item in batches from `concurrency` concurrent clients; returns what they saw."""
    ledger = Ledger()
    deadline = time.monotonic() + timeout
    pool = eventlet.GreenPool(concurrency)
    for start in range(0, len(items), batch_size):
        pool.spawn_n(post_batch, url, token, items[start:start + batch_size], ledger, deadline)
    pool.waitall()
    return ledger
