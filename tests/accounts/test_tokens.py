"""API tokens: shown once, stored hashed, scoped, expiring, revocable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from services.accounts import tokens
from services.accounts.exceptions import Forbidden, TokenInvalid
from services.accounts.models import ApiToken
from services.common.scope import Scope


def issue(session, issuer, kind, ident, access="read", **extra):
    return tokens.issue_token(session, issuer, {
        "scope_kind": kind, "scope_id": ident, "label": "测试", "access": access, **extra,
    })


def test_token_is_stored_only_as_its_hash(session, city):
    issued = issue(session, city["admin"], "school", city["branch"]["id"])
    stored = session.scalar(select(ApiToken).where(ApiToken.id == issued["id"]))
    assert issued["token"] not in (stored.token_hash, stored.prefix, stored.label)
    assert stored.token_hash == tokens.hash_token(issued["token"])


def test_verified_token_grants_its_scope(session, city):
    issued = issue(session, city["admin"], "school", city["branch"]["id"], access="write")
    scope = tokens.verify_token(session, issued["token"])
    assert (scope["kind"], scope["id"], scope["access"]) == ("school", city["branch"]["id"], "write")


@pytest.mark.parametrize("secret", ["", "lx_", "lx_unknown", "Bearer x", None, 42, "lx_" + "a" * 500])
def test_unknown_or_malformed_tokens_are_invalid(session, city, secret):
    with pytest.raises(TokenInvalid):
        tokens.verify_token(session, secret)


def test_expired_token_is_invalid(session, city):
    issued = issue(session, city["admin"], "bureau", city["bureau"]["id"], ttl_days=1)
    later = datetime.now(UTC) + timedelta(days=2)
    with pytest.raises(TokenInvalid, match=r"^The token is not valid\.$"):
        tokens.verify_token(session, issued["token"], now=later)


def test_revoked_token_is_invalid(session, city):
    issued = issue(session, city["admin"], "district", city["east"]["id"])
    tokens.revoke_token(session, city["admin"], issued["id"])
    with pytest.raises(TokenInvalid, match=r"^The token is not valid\.$"):
        tokens.verify_token(session, issued["token"])


def test_tokens_cannot_widen_their_scope(session, city):
    district_writer = Scope(city["bureau"]["id"], "district", city["east"]["id"], "write")
    assert issue(session, district_writer, "school", city["branch"]["id"])["scope_kind"] == "school"
    with pytest.raises(Forbidden):
        issue(session, district_writer, "school", city["other"]["id"])  # another district's school
    with pytest.raises(Forbidden):
        issue(session, district_writer, "bureau", city["bureau"]["id"])
    school_writer = Scope(city["bureau"]["id"], "school", city["branch"]["id"], "write")
    with pytest.raises(Forbidden):
        issue(session, school_writer, "school", city["branch"]["id"])
    reader = Scope(city["bureau"]["id"], "bureau", city["bureau"]["id"], "read")
    with pytest.raises(Forbidden):
        issue(session, reader, "school", city["branch"]["id"])


def test_a_district_sees_only_its_own_and_its_schools_tokens(session, city):
    mine = issue(session, city["admin"], "school", city["branch"]["id"])
    theirs = issue(session, city["admin"], "school", city["other"]["id"])
    district = Scope(city["bureau"]["id"], "district", city["east"]["id"], "write")
    visible = {token["id"] for token in tokens.list_tokens(session, district)}
    assert mine["id"] in visible and theirs["id"] not in visible
    with pytest.raises(Forbidden):
        tokens.revoke_token(session, district, theirs["id"])


def test_minting_is_bounded_per_scope_and_per_hour(session, city, monkeypatch):
    from services.accounts.exceptions import TooManyTokens

    monkeypatch.setattr(tokens, "MAX_ACTIVE_TOKENS_PER_SCOPE", 3)
    monkeypatch.setattr(tokens, "MAX_TOKENS_PER_BUREAU_PER_HOUR", 5)
    school = city["branch"]["id"]
    issued = [issue(session, city["admin"], "school", school) for _ in range(3)]
    with pytest.raises(TooManyTokens, match="active tokens"):
        issue(session, city["admin"], "school", school)
    tokens.revoke_token(session, city["admin"], issued[0]["id"])
    issue(session, city["admin"], "school", school)  # revoking one makes room
    issue(session, city["admin"], "school", city["master"]["id"])
    with pytest.raises(TooManyTokens, match="last hour"):
        issue(session, city["admin"], "school", city["master"]["id"])
