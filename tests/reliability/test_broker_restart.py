"""RabbitMQ (our own node) restarted during a 10 000-activity ingestion through the gateway.

The contract shown here: a client that gets 503 (or a cut connection) resends the same batch with the
same ids; once the broker is back, every activity is stored once and published once per event id.
"""

from __future__ import annotations

import time
from pathlib import Path

import eventlet
import pytest

from .figures import Row, record
from .infra import PostgresCluster, RabbitNode, wait_until
from .ingest import activities, ingest
from .stack import running_stack

ACTIVITIES = 10_000
DOWN_SECONDS = 3.0


@pytest.mark.timeout(480)
def test_broker_restart_during_ingestion_loses_and_duplicates_nothing(
    broker: RabbitNode, postgres: PostgresCluster, tmp_path: Path
) -> None:
    with running_stack(broker, postgres, tmp_path) as stack:
        assert stack.city is not None
        token = stack.city.tokens["bureau_write"]
        items = activities(list(stack.city.teachers.values())[:3], ACTIVITIES, "broker")
        restart: dict[str, float] = {}

        def restarter() -> None:
            wait_until(lambda: stack.scalar("activities", "SELECT count(*) FROM activities") >= ACTIVITIES * 0.3,
                       240, "ingestion to progress", interval=0.05)
            restart["stored_at_stop"] = stack.scalar("activities", "SELECT count(*) FROM activities")
            started = time.monotonic()
            broker.stop()
            eventlet.sleep(DOWN_SECONDS)
            broker.start()
            restart["down"] = time.monotonic() - started

        worker = eventlet.spawn(restarter)
        ledger = ingest(stack.url, token, items, batch_size=100, concurrency=4, timeout=360)
        worker.wait()

        sent = {item["id"] for item in items}
        stored = stack.stored_ids()
        stack.outbox_drained(timeout=90)
        delivered = stack.drain_audit(len(sent), timeout=90)
        lost = len(ledger.confirmed - set(stored)) + len(ledger.confirmed - set(delivered.ids))
        duplicated = sum(count - 1 for count in stored.values()) + len(set(stored) - sent)
        record(Row(
            "RabbitMQ node restarted during ingestion", len(sent), len(ledger.confirmed), len(stored),
            delivered.distinct, lost, duplicated, f"{ledger.longest_outage_seconds:.1f} s",
            f"broker down {restart.get('down', 0):.1f} s at {restart.get('stored_at_stop')} rows; client statuses "
            f"{dict(ledger.statuses)}, {ledger.retries} retries of the same batch, {ledger.duplicates} items "
            f"answered 'duplicate' (stored by an attempt the client never heard of); "
            f"{delivered.redelivered} event redeliveries (same id); service crashes restarted by the "
            f"supervisor: {stack.crashes or 'none'}",
        ))
        assert "down" in restart, "the broker was not restarted during the ingestion"
        assert not ledger.rejected and ledger.unconfirmed_batches == 0 and ledger.server_errors == 0
        assert ledger.confirmed == sent
        assert lost == 0 and duplicated == 0
        assert set(stored) == sent and set(delivered.ids) == sent
        if stack.crashes:
            # Known defect (outside this suite's files): nameko's `Rpc.handle_result` raises when the reply
            # cannot be published, which kills the whole container; only a supervisor brings it back.
            pytest.xfail(f"services exited when the broker went away and needed a restart: {stack.crashes}")
