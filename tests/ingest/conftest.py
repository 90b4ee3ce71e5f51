"""Fixtures of the ingest tests: the relay's data-plane fixture, and an ingest process beside it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.relay.relay_harness import DataPlane, dataplane  # noqa: F401  (fixture re-exported for pytest)

from .ingest_harness import IngestProcess, start_ingest


@pytest.fixture
def ingest(dataplane: DataPlane) -> Iterator[IngestProcess]:  # noqa: F811  (the fixture above)
    process = start_ingest(dataplane.control_secret)
    try:
        yield process
    finally:
        errors = process.stop()
        assert "Traceback" not in errors, errors
