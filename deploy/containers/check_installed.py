"""Run inside the image build: the environment holds exactly the runtime lock (and lianxiao itself), so
no test tool and nothing unpinned reached the image. Exits non-zero with what differs.

    python check_installed.py requirements-runtime.lock
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import distributions
from pathlib import Path

# Installers, removed after this check; lianxiao is the project itself.
ALLOWED_EXTRA = {"pip", "setuptools", "wheel", "lianxiao"}
# Named so a lock that gains one fails here too, not only in tests/ops/test_ops_locks.py.
TEST_TOOLS = {"pytest", "pluggy", "iniconfig", "hypothesis", "schemathesis", "mock", "py-spy",
              "kubernetes-validate", "ruff", "mypy", "pyright", "coverage"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalize(name)] = version.strip()
    return pins


def main(lock_path: str) -> int:
    pins = locked(lock_path)
    installed = {normalize(dist.metadata["Name"]): dist.version for dist in distributions()}
    problems = [f"test tool in the image: {name}" for name in sorted(TEST_TOOLS & installed.keys())]
    problems += [f"not in {lock_path}: {name}=={version}" for name, version in sorted(installed.items())
                 if name not in pins and name not in ALLOWED_EXTRA]
    problems += [f"{name}: installed {installed.get(name)}, locked {version}" for name, version in sorted(pins.items())
                 if installed.get(name) != version]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
