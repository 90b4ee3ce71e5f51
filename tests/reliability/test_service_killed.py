"""The activities service SIGKILLed mid-batch and restarted: unacked work is redelivered, 0 lost, 0 duplicated."""

from __future__ import annotations

import time
from pathlib import Path

import eventlet
import pytest

from .figures import Row, record
from .infra import PostgresCluster, RabbitNode, wait_until
from .ingest import Ledger, activities, ingest
from .stack import running_stack

ACTIVITIES = 5_000
KILLS = 2


@pytest.mark.timeout(420)
def test_activities_killed_mid_batch_loses_and_duplicates_nothing(
    broker: RabbitNode, postgres: PostgresCluster, tmp_path: Path
) -> None:
    with running_stack(broker, postgres, tmp_path) as stack:
        assert stack.city is not None
        token = stack.city.tokens["bureau_write"]
        items = activities(list(stack.city.teachers.values())[:3], ACTIVITIES, "kill")
        service = stack.services["activities"]
        kills: list[tuple[int, float]] = []  # (rows stored when killed, seconds until it answered again)

        def killer() -> None:
            for kill in range(KILLS):
                # Kill while batches are in flight: after 30 % (then 65 %) of the activities are stored.
                threshold = ACTIVITIES * (0.3 + 0.35 * kill)
                wait_until(lambda at=threshold: stack.scalar("activities", "SELECT count(*) FROM activities") >= at,
                           180, "ingestion to progress", interval=0.02)
                stored_then = stack.scalar("activities", "SELECT count(*) FROM activities")
                service.kill()
                killed_at = time.monotonic()
                eventlet.sleep(1.0)  # the gateway meanwhile times out or queues requests for the new process
                service.start()
                kills.append((stored_then, time.monotonic() - killed_at))

        watcher = eventlet.spawn(killer)
        ledger: Ledger = ingest(stack.url, token, items, batch_size=100, concurrency=4, timeout=300)
        watcher.wait()

        sent = {item["id"] for item in items}
        stored = stack.stored_ids()
        stack.outbox_drained()
        delivered = stack.drain_audit(len(sent))
        lost = len(ledger.confirmed - set(stored)) + len(ledger.confirmed - set(delivered.ids))
        duplicated = sum(count - 1 for count in stored.values()) + len(set(stored) - sent)
        record(Row(
            "activities SIGKILLed x2 mid-batch, restarted", len(sent), len(ledger.confirmed), len(stored),
            delivered.distinct, lost, duplicated, f"down {max(k[1] for k in kills):.1f} s",
            f"killed at {[k[0] for k in kills]} rows; clients saw {ledger.outage_seconds:.1f} s of errors, "
            f"statuses {dict(ledger.statuses)}, "
            f"{ledger.retries} retries; {delivered.redelivered} event redeliveries (same id); "
            f"other exits: {stack.crashes or 'none'}",
        ))
        assert len(kills) == KILLS
        assert not ledger.rejected and ledger.unconfirmed_batches == 0 and ledger.server_errors == 0
        assert ledger.confirmed == sent
        assert lost == 0 and duplicated == 0
        assert set(stored) == sent and set(delivered.ids) == sent
