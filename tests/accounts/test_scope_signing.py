"""Services trust only scopes that accounts signed (issue 12, item 9): a made-up scope sent over the
broker is refused, a verified one works and can be passed on to another service."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from nameko.testing.services import worker_factory

from services.accounts import tokens
from services.accounts.service import AccountsService
from services.common.errors import Unauthenticated
from services.common.scope import SCOPE_SECRET_VARIABLE, Scope, sign_scope


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(SCOPE_SECRET_VARIABLE, "test-secret-" + "x" * 20)
    return "set"


def made_up(bureau_id: int) -> dict:
    return {"bureau_id": bureau_id, "kind": "bureau", "id": bureau_id, "access": "write", "token_id": None}


def test_a_made_up_scope_cannot_issue_tokens(session, city, secret):
    service = worker_factory(AccountsService, db=session)
    with pytest.raises(Unauthenticated, match="not signed"):
        service.issue_token(made_up(city["bureau"]["id"]),
                            {"scope_kind": "bureau", "scope_id": city["bureau"]["id"], "label": "x", "access": "write"})


def test_a_verified_scope_works_and_survives_being_passed_on(session, city, secret):
    issued = tokens.issue_token(session, city["admin"], {"scope_kind": "bureau", "scope_id": city["bureau"]["id"],
                                                         "label": "office", "access": "write"})
    verified = tokens.verify_token(session, issued["token"])
    assert verified["signature"]
    service = worker_factory(AccountsService, db=session)
    assert service.get_school(verified, city["master"]["id"])["id"] == city["master"]["id"]
    forwarded = Scope.from_dict(verified).to_dict()  # what reporting sends on to accounts
    assert Scope.from_dict(forwarded).bureau_id == city["bureau"]["id"]


@pytest.mark.parametrize("change", [
    {"kind": "bureau", "id": 1}, {"access": "write"}, {"bureau_id": 2}, {"signed_until": "2999-01-01T00:00:00+00:00"},
])
def test_a_tampered_scope_is_refused(secret, change):
    signed = sign_scope({"bureau_id": 1, "kind": "school", "id": 7, "access": "read", "token_id": 3},
                        datetime.now(UTC) + timedelta(days=1))
    with pytest.raises(Unauthenticated):
        Scope.from_dict({**signed, **change})


def test_a_signature_expires_with_its_token_or_after_minutes(secret):
    now = datetime.now(UTC)
    signed = sign_scope({"bureau_id": 1, "kind": "school", "id": 7, "access": "read", "token_id": 3},
                        now + timedelta(days=1), now=now - timedelta(minutes=6))
    with pytest.raises(Unauthenticated, match="expired"):
        Scope.from_dict(signed)
    short = sign_scope({"bureau_id": 1, "kind": "school", "id": 7, "access": "read", "token_id": 3},
                       now - timedelta(seconds=1))
    with pytest.raises(Unauthenticated, match="expired"):
        Scope.from_dict(short)
