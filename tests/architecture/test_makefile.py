"""The Makefile: every target explains itself in `make help`, every tool comes from the lock file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAKEFILES = [REPO / "Makefile", *sorted((REPO / "mk").glob("*.mk"))]
TARGET = re.compile(r"^([a-zA-Z][\w-]*)\s*::?(?!=)(.*)$")


def targets() -> dict[str, bool]:
    """Every named target and whether one of its rules carries a `## ` description."""
    found: dict[str, bool] = {}
    for makefile in MAKEFILES:
        for line in makefile.read_text().splitlines():
            match = TARGET.match(line)
            if match and not match.group(1).startswith("."):
                found[match.group(1)] = found.get(match.group(1), False) or "## " in match.group(2)
    return found


def test_every_target_is_described_and_listed_by_make_help() -> None:
    undescribed = sorted(name for name, described in targets().items() if not described)
    assert not undescribed, f"targets without a `## ` description: {undescribed}"
    listed = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    shown = {line.split()[1] for line in listed.splitlines() if line.strip().startswith("make ")}
    assert shown == set(targets()), set(targets()) ^ shown


def test_tools_come_from_the_lock_file_and_failures_are_not_hidden() -> None:
    lock = {line.split("==")[0].lower() for line in (REPO / "requirements.lock").read_text().split()}
    for tool in ("ruff", "mypy", "pytest", "kubernetes-validate", "schemathesis", "jsonschema"):
        assert tool in lock, f"{tool} is not pinned in requirements.lock"
    for makefile in MAKEFILES:
        text = makefile.read_text()
        side_installs = [line for line in text.splitlines() if "pip install" in line and "requirements.lock" not in line
                         and "-e ." not in line]
        assert not side_installs, f"{makefile.name} installs beside the lock: {side_installs}"
        assert not re.search(r";\s*true\b|\|\|\s*true\b", text), f"{makefile.name} hides a failure"
