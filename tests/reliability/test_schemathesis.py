"""schemathesis against the gateway's own /openapi.json, every operation, with a bureau write token.

Checks: no 5xx, status codes, content types, headers and bodies as the document says, and
authentication never ignored. Bounded: a fixed number of examples per operation and a time budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .figures import Row, record
from .infra import PostgresCluster, RabbitNode
from .stack import running_stack

ST = Path(sys.executable).with_name("st")
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,ignored_auth")
MAX_EXAMPLES = os.environ.get("RELIABILITY_SCHEMATHESIS_EXAMPLES", "15")


def schemathesis_version() -> str:
    result = subprocess.run([str(ST), "--version"], capture_output=True, text=True, timeout=60, check=False)
    return result.stdout.strip().rsplit(" ", 1)[-1]


@pytest.mark.timeout(600)
def test_gateway_honours_its_openapi_document(broker: RabbitNode, postgres: PostgresCluster, tmp_path: Path) -> None:
    if not ST.exists():
        pytest.fail(f"schemathesis is not installed in the venv ({ST}); it is pinned in requirements.lock (make deps)")
    services = ("accounts", "activities", "classroom_relay", "reporting")
    with running_stack(broker, postgres, tmp_path, services) as stack:
        assert stack.city is not None
        token = stack.city.tokens["bureau_write"]
        report = tmp_path / "schemathesis.ndjson"
        command = [
            str(ST), "run", f"{stack.url}/openapi.json", "--checks", CHECKS, "--max-examples", MAX_EXAMPLES,
            "-H", f"Authorization: Bearer {token}", "--workers", "2", "--request-timeout", "35", "--max-time", "150",
            "--seed", "7", "--phases", "examples,coverage,fuzzing", "--report", "ndjson",
            "--report-ndjson-path", str(report), "--output-truncate", "true", "--no-color",
            "--suppress-health-check", "all",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=480, check=False,
                                env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
        (tmp_path / "schemathesis.out").write_text(result.stdout + result.stderr)
        summary = [line for line in result.stdout.splitlines() if line.strip()][-12:]
        operations, cases, failures = count(report)
        record(Row(
            f"schemathesis {schemathesis_version()}: /openapi.json", cases, notes=(
                f"{operations} operations, {cases} generated requests, {failures} failed checks "
                f"(checks: {CHECKS.replace(',', ', ')}; {MAX_EXAMPLES} examples per operation)"
            ),
        ))
        assert result.returncode == 0, "\n".join(result.stdout.splitlines()[-150:]) or result.stderr[-3000:]
        assert "\n".join(summary)


def count(report: Path) -> tuple[int, int, int]:
    """Operations, generated test cases and failed checks from schemathesis' ndjson event log."""
    operations: set[str] = set()
    cases = failures = 0
    if not report.exists():
        return 0, 0, 0
    for line in report.read_text().splitlines():
        event = json.loads(line)
        for name, payload in event.items():
            if name == "ScenarioFinished" and isinstance(payload, dict):
                recorder = payload.get("recorder") or {}
                label = recorder.get("label")
                if label:
                    operations.add(str(label).split(" -> ")[0])
                cases += len(recorder.get("cases") or {})
                for checks in (recorder.get("checks") or {}).values():
                    failures += sum(1 for check in checks if check.get("status") == "FAILURE")
    return len(operations), cases, failures
