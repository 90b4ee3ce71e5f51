"""API tokens: random secrets shown once, stored only as SHA-256, expiring, revocable, scoped."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.accounts import schemas
from services.accounts.directory import _get, school_in_scope
from services.accounts.exceptions import Forbidden, InvalidInput, NotFound, TokenInvalid, TooManyTokens
from services.accounts.models import ApiToken, Bureau, District, School, outbox
from services.common.scope import Scope, sign_scope
from services.common.timeutil import as_utc
from services.common.validation import load

TOKEN_PREFIX = "lx_"
TOKEN_OUT = schemas.TokenOut()
ISSUED_OUT = schemas.IssuedTokenOut()
SCOPE_RANK = {"bureau": 0, "district": 1, "school": 2}
# Minting is bounded (issue 12, item 13): a leaked write token must not mint an unbounded supply of
# credentials (each a way around revocation and per-token rate limits) or fill the table.
MAX_ACTIVE_TOKENS_PER_SCOPE = 50  # unrevoked, unexpired tokens for one bureau/district/school
MAX_TOKENS_PER_BUREAU_PER_HOUR = 200


def hash_token(token: str) -> str:
    # The secret has 256 bits of entropy, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _resolve_target(session: Session, issuer: Scope, kind: str, ident: int) -> None:
    """The new token's scope must lie inside the issuer's scope and exist."""
    if SCOPE_RANK[kind] < SCOPE_RANK[issuer.kind]:
        raise Forbidden(f"A {issuer.kind} token cannot issue a {kind} token.")
    if issuer.kind == "school":
        raise Forbidden("School tokens cannot issue tokens; ask the district or the bureau.")
    if kind == "bureau":
        _get(session, Bureau, ident, "Bureau", issuer.bureau_id)
    elif kind == "district":
        _get(session, District, ident, "District", issuer.bureau_id)
        if issuer.kind == "district" and ident != issuer.id:
            raise Forbidden(f"District {ident} is outside this token's scope ({issuer.describe()}).")
    else:
        school_in_scope(session, issuer, ident)


def issue_token(session: Session, issuer: Scope, data: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    values = load(schemas.TokenIn(), data)
    issuer.require_write()
    if values["access"] == "write" and issuer.access != "write":
        raise Forbidden("A read token cannot issue a write token.")
    _resolve_target(session, issuer, values["scope_kind"], values["scope_id"])
    created = _now(now)
    _check_minting_limits(session, issuer.bureau_id, values["scope_kind"], values["scope_id"], created)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        token_hash=hash_token(secret),
        prefix=secret[:10],
        label=values["label"],
        bureau_id=issuer.bureau_id,
        scope_kind=values["scope_kind"],
        scope_id=values["scope_id"],
        access=values["access"],
        created_at=created,
        expires_at=created + timedelta(days=values["ttl_days"]),
    )
    session.add(token)
    session.flush()
    outbox.add(session, "token.issued", TOKEN_OUT.dump(token), subject=f"token/{token.id}")
    return {**ISSUED_OUT.dump(token), "token": secret}


def _check_minting_limits(session: Session, bureau_id: int, kind: str, ident: int, now: datetime) -> None:
    active = session.scalar(
        select(func.count()).select_from(ApiToken).where(
            ApiToken.scope_kind == kind, ApiToken.scope_id == ident, ApiToken.bureau_id == bureau_id,
            ApiToken.revoked_at.is_(None), ApiToken.expires_at > now,
        )
    ) or 0
    if active >= MAX_ACTIVE_TOKENS_PER_SCOPE:
        raise TooManyTokens(
            f"The {kind} {ident} already has {active} active tokens (at most {MAX_ACTIVE_TOKENS_PER_SCOPE}); "
            "revoke unused ones first."
        )
    recent = session.scalar(
        select(func.count()).select_from(ApiToken).where(
            ApiToken.bureau_id == bureau_id, ApiToken.created_at > now - timedelta(hours=1)
        )
    ) or 0
    if recent >= MAX_TOKENS_PER_BUREAU_PER_HOUR:
        raise TooManyTokens(
            f"This bureau issued {recent} tokens in the last hour (at most {MAX_TOKENS_PER_BUREAU_PER_HOUR}); "
            "retry later."
        )


def verify_token(session: Session, secret: Any, now: datetime | None = None) -> dict[str, Any]:
    """The scope a bearer token grants; `TokenInvalid` for unknown, expired or revoked tokens."""
    if not isinstance(secret, str) or not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        raise TokenInvalid("The token is not valid.")
    digest = hash_token(secret)
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if token is None or not hmac.compare_digest(token.token_hash, digest):
        raise TokenInvalid("The token is not valid.")
    # Revoked or expired says no more than unknown (issue 12, item 15): whoever holds a leaked token
    # learns nothing from it; the owner sees the state in GET /v1/tokens.
    if token.revoked_at is not None or as_utc(token.expires_at) <= _now(now):
        raise TokenInvalid("The token is not valid.")
    scope = Scope(token.bureau_id, token.scope_kind, token.scope_id, token.access, token.id)
    expires_at = as_utc(token.expires_at)
    return sign_scope({**scope.to_dict(), "expires_at": expires_at.isoformat()}, expires_at, now)


def _token_in_scope(session: Session, scope: Scope, token_id: Any) -> ApiToken:
    if not isinstance(token_id, int) or isinstance(token_id, bool):
        raise InvalidInput("Token id must be an integer.")
    token = session.get(ApiToken, token_id)
    if token is None or token.bureau_id != scope.bureau_id:
        raise NotFound(f"Token {token_id} does not exist.")
    visible = scope.kind == "bureau" or (token.scope_kind, token.scope_id) == (scope.kind, scope.id)
    if scope.kind == "district" and token.scope_kind == "school":
        school = session.get(School, token.scope_id)
        visible = school is not None and school.district_id == scope.id
    if not visible:
        raise Forbidden(f"Token {token_id} is outside this token's scope ({scope.describe()}).")
    return token


def revoke_token(session: Session, scope: Scope, token_id: int, now: datetime | None = None) -> dict[str, Any]:
    scope.require_write()
    token = _token_in_scope(session, scope, token_id)
    if token.revoked_at is None:
        token.revoked_at = _now(now)
        session.flush()
        outbox.add(session, "token.revoked", TOKEN_OUT.dump(token), subject=f"token/{token.id}")
    return TOKEN_OUT.dump(token)


def list_tokens(session: Session, scope: Scope) -> list[dict[str, Any]]:
    tokens = session.scalars(select(ApiToken).where(ApiToken.bureau_id == scope.bureau_id).order_by(ApiToken.id))
    visible = []
    for token in tokens:
        try:
            visible.append(TOKEN_OUT.dump(_token_in_scope(session, scope, token.id)))
        except Forbidden:
            continue
    return visible
