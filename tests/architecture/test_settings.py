"""Settings: one typed helper reads the environment, and README's table is its output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.common.settings import Setting, boolean, markdown_table
from services.platform import all_settings

REPO = Path(__file__).resolve().parents[2]
# Files that may touch os.environ directly, each for a reason.
ENVIRON_ALLOWED = {
    "services/common/settings.py": "the helper itself",
    "services/common/runner.py": "passes every *DATABASE_URL through to nameko's config",
    "services/gateway/gunicorn.conf.py": "sets PROMETHEUS_MULTIPROC_DIR before any worker starts",
}


def readme_table() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return "\n".join(rows) + "\n"


def test_readme_configuration_table_is_the_declared_settings() -> None:
    assert readme_table() == markdown_table(all_settings()), (
        "README's configuration table is out of date: paste `.venv/bin/python -m services.platform settings-table`"
    )


def test_nothing_else_reads_the_environment_by_hand() -> None:
    readers = []
    for path in sorted((REPO / "services").rglob("*.py")):
        relative = str(path.relative_to(REPO))
        if relative not in ENVIRON_ALLOWED and re.search(r"\bos\.(environ|getenv)\b", path.read_text()):
            readers.append(relative)
    assert not readers, f"read settings through services/common/settings.py: {readers}"


def test_a_setting_reads_config_then_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    workers = Setting("LIANXIAO_TEST_WORKERS", int, 10, "test")
    monkeypatch.delenv("LIANXIAO_TEST_WORKERS", raising=False)
    assert workers.get() == 10
    monkeypatch.setenv("LIANXIAO_TEST_WORKERS", "")
    assert workers.get() == 10  # empty is unset
    monkeypatch.setenv("LIANXIAO_TEST_WORKERS", "4")
    assert workers.get() == 4
    assert workers.get({"LIANXIAO_TEST_WORKERS": 6}) == 6
    monkeypatch.setenv("LIANXIAO_TEST_WORKERS", "four")
    with pytest.raises(ValueError, match="LIANXIAO_TEST_WORKERS='four'"):
        workers.get()


def test_a_per_service_setting_names_its_service(monkeypatch: pytest.MonkeyPatch) -> None:
    url = Setting("<SERVICE>_LIANXIAO_TEST_URL", str, None, "test")
    monkeypatch.setenv("ACCOUNTS_LIANXIAO_TEST_URL", "sqlite://")
    assert url.get(service="accounts") == "sqlite://"
    assert url.get(service="reporting") is None
    with pytest.raises(ValueError, match="name the service"):
        url.get()


def test_booleans_are_spelled_plainly() -> None:
    assert [boolean(text) for text in ("1", "TRUE", "yes", "on", "0", "false", "No", "off")] == [True] * 4 + [False] * 4
    with pytest.raises(ValueError):
        boolean("maybe")


def test_every_setting_is_declared_once_and_documented() -> None:
    names = [item.name for item in all_settings()]
    assert len(names) == len(set(names))
    assert all(item.meaning for item in all_settings())
