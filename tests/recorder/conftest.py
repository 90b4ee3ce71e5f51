"""Fixtures of the recorder tests: a storage root and a block of media ports per test, a recorder on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .recorder_harness import FFMPEG, RecorderProcess, free_port_block, start_recorder


@pytest.fixture
def media_base() -> int:
    return free_port_block()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "recordings"


@pytest.fixture
def recorder(root: Path, media_base: int) -> Iterator[RecorderProcess]:
    if FFMPEG is None:
        pytest.skip("ffmpeg is not installed (make system-deps)")
    process = start_recorder(root, media_base)
    try:
        yield process
    finally:
        errors = process.stop()
        assert "Traceback" not in errors, errors
