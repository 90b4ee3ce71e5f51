"""The import rules of docs/architecture.md, checked: faces stay light, services meet only at faces.

- A service's face (`schemas.py`, `exceptions.py`) imports only the standard library, marshmallow and
  `services.common`, so any process can read a service's shapes and errors without its tables.
- A service (and the gateway) imports another service's face and nothing else of it.
- `services/common` names no service; its command-line entry points read the list of services from the
  composition root, `services/platform.py`.
- The gateway, imported in a fresh interpreter, loads no models, no ORM, no openpyxl, no data plane.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from services.platform import SERVICE_NAMES

REPO = Path(__file__).resolve().parents[2]
SERVICES_DIR = REPO / "services"
FACE_MODULES = ("schemas", "exceptions")
# Packages a face may import besides the standard library and services.common.
FACE_THIRD_PARTY = ("marshmallow",)
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def python_files() -> Iterator[Path]:
    for path in sorted(SERVICES_DIR.rglob("*.py")):
        if "migrations" not in path.relative_to(SERVICES_DIR).parts:
            yield path


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (REPO / relative).with_suffix(".py").exists() or (REPO / relative / "__init__.py").exists()


def imported_modules(path: Path, here: str) -> Iterator[tuple[int, str]]:
    """Every module a file imports (at any depth of the code), with the line it does it on."""
    package = here.rsplit(".", 1)[0] if path.name != "__init__.py" else here
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
            submodules = [name for name in names if is_module(name)]
            # `from services.accounts import schemas` imports the module `services.accounts.schemas`.
            yield from ((node.lineno, name) for name in (submodules or [base]))


def owner(module: str) -> str | None:
    """The part a `services.*` module belongs to: a service, "gateway", "common", or None (the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "services" and parts[1] != "platform" else None


def is_face(module: str) -> bool:
    parts = module.split(".")
    return len(parts) == 3 and parts[1] in SERVICE_NAMES and parts[2] in FACE_MODULES


def violations(files: Iterable[tuple[Path, str]]) -> Iterator[str]:
    """What breaks the rules in these (file, module name) pairs."""
    for path, here in files:
        part = owner(here)
        for line, target in imported_modules(path, here):
            where = f"{here}:{line} imports {target}"
            top = target.split(".")[0]
            if is_face(here):
                if top in STDLIB or top in FACE_THIRD_PARTY or target.startswith("services.common"):
                    continue
                if target.rsplit(".", 1)[0] == here.rsplit(".", 1)[0] and is_face(target):
                    continue  # a face may use the other half of its own face
                yield f"{where}: a face imports only the standard library, marshmallow and services.common"
                continue
            if top != "services" or target in ("services", "services.platform"):
                continue
            target_part = owner(target)
            if part == "common" and target_part != "common":
                yield f"{where}: services/common names no service (the list is in services/platform.py)"
            elif part not in (None, "common") and target_part not in (part, "common") and not is_face(target):
                yield f"{where}: another part may import only a service's face ({', '.join(FACE_MODULES)})"


def test_every_service_has_a_face() -> None:
    for name in SERVICE_NAMES:
        for face in FACE_MODULES:
            assert (SERVICES_DIR / name / f"{face}.py").exists(), f"services/{name} has no {face}.py"


def test_services_meet_only_at_their_faces() -> None:
    found = list(violations((path, module_name(path)) for path in python_files()))
    assert not found, "\n".join(found)


@pytest.mark.parametrize(("module", "source", "broken"), [
    ("services.gateway.routes.probe", "from services.accounts.models import Teacher\n", 1),
    ("services.gateway.routes.probe", "from services.accounts import roster, schemas\n", 1),
    ("services.reporting.probe", "import services.activities.xapi\nfrom services.activities import schemas\n", 1),
    ("services.common.probe", "from services.accounts.schemas import ROLES\n", 1),
    ("services.classroom_relay.schemas", "from sqlalchemy import select\nfrom services.common import errors\n", 1),
    ("services.accounts.schemas", "from services.accounts import models\n", 1),
    ("services.accounts.directory", "from services.accounts.models import Teacher\n", 0),
])
def test_the_rule_checker_reports_what_breaks_a_rule(tmp_path: Path, module: str, source: str, broken: int) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    found = list(violations([(probe, module)]))
    assert len(found) == broken, found


FORBIDDEN_IN_GATEWAY = [
    (re.compile(r"^services\.\w+\.models$"), "a service's tables"),
    (re.compile(r"^sqlalchemy\.orm(\.|$)"), "the ORM"),
    (re.compile(r"^openpyxl(\.|$)"), "the spreadsheet writer"),
    (re.compile(r"^services\.classroom_relay\.dataplane\.engine$"), "the relay's data plane"),
]


@pytest.mark.timeout(60)
def test_the_gateway_loads_faces_and_nothing_else_of_the_services() -> None:
    probe = "import json, sys\nimport services.gateway.app\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                            check=True)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "services.gateway.app" in loaded
    wrong = [f"{module} ({why})" for module in loaded for pattern, why in FORBIDDEN_IN_GATEWAY
             if pattern.search(module)]
    wrong += [module for module in loaded
              if owner(module) in SERVICE_NAMES and module != f"services.{owner(module)}" and not is_face(module)]
    assert not wrong, f"importing the gateway loaded: {', '.join(wrong)}"
