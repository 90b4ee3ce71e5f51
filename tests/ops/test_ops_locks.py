"""The two lock files: requirements-runtime.lock (what the image installs, with --no-deps) is closed under
its packages' requirements and holds no test tool; requirements.lock (the development lock) is the
runtime lock plus the tools. Read against the development venv, which has every locked package."""

from __future__ import annotations

import importlib.util
import re
import runpy
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .ops_helpers import REPO

RUNTIME_LOCK = REPO / "requirements-runtime.lock"
DEV_LOCK = REPO / "requirements.lock"
CHECK_INSTALLED = REPO / "deploy" / "containers" / "check_installed.py"
# Declared by a runtime package but imported only by its test helpers (nameko.testing): kept out.
DECLARED_BUT_UNUSED = {"mock"}


def pins(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-r"):
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned with =="
            found[canonicalize_name(name)] = version
    return found


def test_development_lock_is_the_runtime_lock_plus_tools() -> None:
    includes = [line for line in DEV_LOCK.read_text().splitlines() if line.startswith("-r")]
    assert includes == ["-r requirements-runtime.lock"]
    runtime, development = pins(RUNTIME_LOCK), pins(DEV_LOCK)
    assert not runtime.keys() & development.keys(), "pinned in both locks"


def test_runtime_lock_is_closed_under_requirements() -> None:
    runtime = pins(RUNTIME_LOCK)
    missing: list[str] = []
    for name in runtime:
        try:
            requirements = distribution(name).requires or []
        except PackageNotFoundError:
            missing.append(f"{name} is not installed in the development venv (make deps)")
            continue
        for text in requirements:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            needed = canonicalize_name(requirement.name)
            if needed in DECLARED_BUT_UNUSED:
                continue
            if needed not in runtime:
                missing.append(f"{name} needs {requirement}, not in requirements-runtime.lock")
            elif not requirement.specifier.contains(runtime[needed], prereleases=True):
                missing.append(f"{name} needs {requirement}, locked {runtime[needed]}")
    assert not missing, "\n".join(missing)


def test_declared_but_unused_packages_stay_unused() -> None:
    # mock may stay out of the image only while no runtime module imports it.
    sources = [*REPO.joinpath("services").rglob("*.py")]
    nameko = Path(importlib.util.find_spec("nameko").origin).parent  # type: ignore[arg-type, union-attr]
    sources += [path for path in nameko.rglob("*.py") if "testing" not in path.relative_to(nameko).parts]
    pattern = re.compile(rf"^\s*(import|from)\s+({'|'.join(DECLARED_BUT_UNUSED)})\b", re.MULTILINE)
    offenders = [str(path) for path in sources if pattern.search(path.read_text(errors="replace"))]
    assert not offenders


def test_image_check_rejects_test_tools_and_none_is_locked_for_runtime() -> None:
    # The development venv has pytest and the rest: the image build's check must fail on it ...
    result = subprocess.run([sys.executable, str(CHECK_INSTALLED), str(RUNTIME_LOCK)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "test tool in the image: pytest" in result.stderr
    # ... and no runtime pin is a tool it rejects.
    check = runpy.run_path(str(CHECK_INSTALLED))
    assert not set(check["locked"](str(RUNTIME_LOCK))) & check["TEST_TOOLS"]


def test_dockerfile_installs_only_the_runtime_lock() -> None:
    text = (REPO / "deploy" / "Dockerfile").read_text()
    assert "-r requirements-runtime.lock" in text and "--no-deps" in text
    assert "check_installed.py requirements-runtime.lock" in text
    froms = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert froms and all(base == "${BASE_IMAGE}" for base in froms)
    assert re.search(r"^ARG BASE_IMAGE=\S*python:3\.11-slim-bookworm$", text, flags=re.MULTILINE)
