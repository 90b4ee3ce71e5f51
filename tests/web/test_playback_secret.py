"""`make run` (deploy/run_local.py) gives nginx and the services one PLAYBACK_SECRET: the configured one, or
one generated into var/ on the first run (mode 0600) and kept, so signed URLs survive a restart."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_local() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_local_under_test", REPO / "deploy" / "run_local.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_secret_is_generated_once_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLAYBACK_SECRET", raising=False)
    module = run_local()
    path = tmp_path / "playback_secret"
    first = module.playback_secret(path)
    assert len(first) >= 40 and path.stat().st_mode & 0o777 == 0o600
    assert module.playback_secret(path) == first  # the next `make run` signs and checks with the same one


def test_a_configured_secret_wins_and_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYBACK_SECRET", "configured-secret-1")
    path = tmp_path / "playback_secret"
    assert run_local().playback_secret(path) == "configured-secret-1"
    assert not path.exists()
