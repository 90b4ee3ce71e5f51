"""Every service's typed errors must reach the gateway as themselves, or they would become 500s."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

from nameko.exceptions import deserialize, serialize

from services.common.errors import LianxiaoError

SERVICES = Path(__file__).resolve().parents[2] / "services"


def service_errors() -> list[type[LianxiaoError]]:
    errors = []
    for path in sorted(SERVICES.glob("*/exceptions.py")):
        module = importlib.import_module(f"services.{path.parent.name}.exceptions")
        errors += [
            member for _, member in inspect.getmembers(module, inspect.isclass)
            if issubclass(member, LianxiaoError) and member.__module__ == module.__name__
        ]
    return errors


def registered_in_a_gateway_worker() -> set[str]:
    """What a fresh process knows after importing what a gunicorn worker imports (and nothing else)."""
    probe = (
        "import json, services.gateway.wsgi; from nameko.exceptions import registry; "
        "print(json.dumps(list(registry)))"
    )
    output = subprocess.run([sys.executable, "-c", probe], cwd=SERVICES.parent, capture_output=True, text=True,
                            timeout=60, check=True).stdout
    return set(json.loads(output.strip().splitlines()[-1]))


def test_the_gateway_process_knows_every_services_typed_errors():
    errors = service_errors()
    assert any(error.__name__ == "AdmissionRefused" for error in errors)
    known = registered_in_a_gateway_worker()
    missing = {f"{error.__module__}.{error.__name__}" for error in errors} - known
    assert not missing, sorted(missing)
    for error in errors:
        received = deserialize(serialize(error("detail", {"field": ["reason"]})))
        assert type(received) is error and received.fields == {"field": ["reason"]}
