"""The platform in containers (`make test-containers`): not part of `make test`. Every test here is marked
`containers` and skipped unless the run selects that marker (`pytest -m containers`) or
LIANXIAO_CONTAINERS=1; it needs podman and the images `make test-containers` builds first."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "containers: the platform's images under podman (make test-containers)")


def _selected(config: pytest.Config) -> bool:
    return "containers" in (config.getoption("markexpr") or "") or os.environ.get("LIANXIAO_CONTAINERS") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="containers: run `make test-containers` (or -m containers)")
    for item in items:
        if "tests/containers/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.containers)
            if not _selected(config):
                item.add_marker(skip)
