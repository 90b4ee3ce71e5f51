"""Tokens never appear in logs; no secret is committed to the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import requests

from services.common.config import REPO_ROOT

from .figures import Row, record
from .infra import PostgresCluster, RabbitNode
from .stack import running_stack

TOKEN_LIKE = re.compile(r"lx_[A-Za-z0-9_-]{30,}")
PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")


@pytest.mark.timeout(180)
def test_tokens_never_reach_the_logs(broker: RabbitNode, postgres: PostgresCluster, tmp_path: Path) -> None:
    # The access log is on, as an operator might run it; services log at INFO, as in production.
    with running_stack(broker, postgres, tmp_path, GATEWAY_ACCESS_LOG="-") as stack:
        assert stack.city is not None
        tokens = stack.city.tokens
        for token in tokens.values():  # valid, expired, revoked, rate-limited...
            requests.get(f"{stack.url}/v1/schools", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        forged = "lx_" + "A" * 43
        requests.get(f"{stack.url}/v1/me", headers={"Authorization": f"Bearer {forged}"}, timeout=30)
        requests.get(f"{stack.url}/v1/me", headers={"Authorization": f"Basic {tokens['bureau_read']}"}, timeout=30)
        issued = requests.post(f"{stack.url}/v1/tokens", timeout=30, json={
            "scope_kind": "school", "scope_id": stack.city.schools["east_one"], "label": "log test", "access": "read",
        }, headers={"Authorization": f"Bearer {tokens['bureau_write']}"})
        assert issued.status_code == 201, issued.text
        secrets = [*tokens.values(), forged, issued.json()["token"]]
    logs = sorted(tmp_path.glob("*.log"))
    text = {path.name: path.read_text(errors="replace") for path in logs}
    found = [(name, secret[:6]) for name, content in text.items() for secret in secrets if secret in content]
    found += [(name, match[:6]) for name, content in text.items() for match in TOKEN_LIKE.findall(content)]
    record(Row("tokens in logs (gateway access+error log, services at INFO)", len(secrets),
               notes=f"{len(found)} tokens found in {len(logs)} logs ({sum(map(len, text.values()))} bytes)"))
    assert "GET /v1/schools" in text["gateway.log"], "the access log was not captured"
    assert not found, found


def test_no_secret_in_the_repository() -> None:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, timeout=30, check=True)
    paths = [REPO_ROOT / name for name in listed.stdout.decode().split("\0") if name]
    findings = []
    scanned = 0
    for path in paths:
        if not path.is_file():
            continue
        content = path.read_bytes()[:5_000_000].decode("utf-8", errors="replace")
        scanned += 1
        findings += [f"{path.relative_to(REPO_ROOT)}: token {match[:8]}..." for match in TOKEN_LIKE.findall(content)]
        findings += [f"{path.relative_to(REPO_ROOT)}: private key" for _ in PRIVATE_KEY.findall(content)]
    record(Row("secrets in tracked files", scanned, notes=f"{len(findings)} token-like strings or private keys"))
    assert scanned > 100
    assert not findings, findings
