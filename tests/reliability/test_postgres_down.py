"""PostgreSQL stopped: 503 problem+json within 1 s for reads and writes, nothing accepted that is not kept,
recovery without anyone touching the services once the database is back."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from .figures import Row, record
from .infra import PostgresCluster, RabbitNode, wait_until
from .ingest import activities, ingest
from .stack import running_stack

PROBLEM = "application/problem+json"
BOUND_SECONDS = 1.0


def timed(method: str, url: str, token: str | None, **kwargs: object) -> tuple[requests.Response, float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.monotonic()
    response = requests.request(method, url, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]
    return response, time.monotonic() - started


@pytest.mark.timeout(300)
def test_postgres_stopped_gives_503_within_a_second_and_recovers(
    broker: RabbitNode, postgres: PostgresCluster, tmp_path: Path
) -> None:
    with running_stack(broker, postgres, tmp_path) as stack:
        assert stack.city is not None
        city = stack.city
        token, reader = city.tokens["bureau_write"], city.tokens["bureau_read"]
        teachers = list(city.teachers.values())[:3]
        before = activities(teachers, 200, "before")
        assert ingest(stack.url, token, before).confirmed == {item["id"] for item in before}
        fresh_token = city.tokens["spare_one"]  # never used yet: not in any worker's cache

        during = activities(teachers, 50, "during")
        probes = [
            ("GET", "/v1/schools", reader, {}),
            ("GET", f"/v1/schools/{city.schools['east_one']}/teachers", reader, {}),
            ("GET", "/v1/activities", reader, {}),
            ("GET", "/v1/schools", fresh_token, {}),  # token verification itself needs the database
            ("POST", "/v1/activities/batch", token, {"json": {"activities": during}}),
            ("POST", "/v1/activities", token, {"json": during[0]}),
            ("POST", "/v1/districts", token, {"json": {"bureau_id": city.bureau_id, "name": "停电片区"}}),
        ]
        postgres.stop()
        stopped_at = time.monotonic()
        answers = []
        try:
            for _round in range(3):  # the first round meets pooled connections the server just cut
                for method, path, who, kwargs in probes:
                    response, elapsed = timed(method, f"{stack.url}{path}", who, **kwargs)
                    answers.append((method, path, response, elapsed))
            ready, _ = timed("GET", f"{stack.url}/readyz", None)
        finally:
            postgres.start()
        restarted_at = time.monotonic()

        bad = [(m, p, r.status_code, r.headers.get("Content-Type"), round(e, 3), r.text[:200])
               for m, p, r, e in answers
               if r.status_code != 503 or not r.headers.get("Content-Type", "").startswith(PROBLEM)
               or e > BOUND_SECONDS or not r.headers.get("Retry-After")]
        slowest = max(elapsed for *_, elapsed in answers)
        # Recovery by itself: the same requests succeed without restarting anything.
        wait_until(lambda: requests.get(f"{stack.url}/v1/schools", headers={"Authorization": f"Bearer {reader}"},
                                        timeout=10).status_code == 200, 60, "reads to recover")
        recovered_at = time.monotonic()
        # Accepts nothing it cannot keep: every write of the outage was refused, and none of it is stored.
        kept_anyway = {item["id"] for item in during} & set(stack.stored_ids())
        resent = ingest(stack.url, token, during)
        assert requests.get(f"{stack.url}/readyz", timeout=10).status_code == 200

        stored = stack.stored_ids()
        stack.outbox_drained()
        delivered = stack.drain_audit(len(before) + len(during))
        sent_ids = {item["id"] for item in before + during}
        confirmed = {item["id"] for item in before} | resent.confirmed
        lost = len(confirmed - set(stored)) + len(confirmed - set(delivered.ids))
        duplicated = sum(count - 1 for count in stored.values()) + len(set(stored) - sent_ids)
        record(Row(
            "PostgreSQL stopped (own cluster)", len(sent_ids), len(confirmed), len(stored), delivered.distinct,
            lost, duplicated, f"{recovered_at - stopped_at:.1f} s",
            f"{len(answers)} requests in outage: statuses {dict(Counter(a[2].status_code for a in answers))}, "
            f"slowest {slowest * 1000:.0f} ms; readyz {ready.status_code}; back {recovered_at - restarted_at:.1f} s "
            f"after PG start",
        ))
        assert not bad, bad
        assert ready.status_code == 503
        assert not kept_anyway, kept_anyway
        assert not resent.rejected and resent.confirmed == {item["id"] for item in during}
        assert lost == 0 and duplicated == 0
        assert set(stored) == sent_ids and delivered.distinct == len(sent_ids)
