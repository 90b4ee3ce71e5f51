"""Who is asking: the scope a verified API token grants, checked by every service that owns data.

The broker is a trust boundary (issue 12, item 9): a scope arrives in every RPC, and any AMQP client
could write one. So accounts signs the scope it verified (HMAC-SHA256 with LIANXIAO_SCOPE_SECRET, shared
by the services and never by the gateway's clients), valid for a few minutes and never past the token's
expiry, and every service checks the signature in `Scope.from_dict`. Without the secret (unit tests, a
service started by hand) scopes are not signed and not checked; `make run`, compose and Kubernetes set it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from services.common.config import SCOPE_SECRET
from services.common.errors import Forbidden, InvalidInput, Unauthenticated

SCOPE_SECRET_VARIABLE = SCOPE_SECRET.name
SIGNATURE_LIFETIME = timedelta(minutes=5)  # longer than any gateway cache entry (30 s) and RPC (30 s)
log = logging.getLogger(__name__)


def scope_secret() -> bytes | None:
    secret = SCOPE_SECRET.get()
    return secret.encode() if secret else None


def _signed_text(data: dict[str, Any]) -> bytes:
    fields_signed = {name: data.get(name) for name in ("bureau_id", "kind", "id", "access", "token_id", "signed_until")}
    return json.dumps(fields_signed, sort_keys=True, separators=(",", ":"), default=str).encode()


def sign_scope(data: dict[str, Any], token_expires_at: datetime, now: datetime | None = None) -> dict[str, Any]:
    """`data` with `signed_until` and `signature` added (unchanged when no secret is configured)."""
    secret = scope_secret()
    if secret is None:
        return data
    now = now or datetime.now(UTC)
    signed = {**data, "signed_until": min(token_expires_at, now + SIGNATURE_LIFETIME).isoformat()}
    signed["signature"] = hmac.new(secret, _signed_text(signed), hashlib.sha256).hexdigest()
    return signed


def check_signature(data: dict[str, Any], now: datetime | None = None) -> None:
    """Refuse a scope the gateway's verification did not produce (when a secret is configured)."""
    secret = scope_secret()
    if secret is None:
        return
    signature = data.get("signature")
    expected = hmac.new(secret, _signed_text(data), hashlib.sha256).hexdigest()
    if not isinstance(signature, str) or not hmac.compare_digest(signature, expected):
        log.warning("refused an RPC whose scope was not signed by accounts (kind=%s)", data.get("kind"))
        raise Unauthenticated("The caller's scope is not signed by accounts; send requests through the gateway.")
    try:
        signed_until = datetime.fromisoformat(str(data.get("signed_until")))
    except ValueError as error:
        raise Unauthenticated("The caller's scope has no valid signing time.") from error
    if signed_until.tzinfo is None or signed_until <= (now or datetime.now(UTC)):
        raise Unauthenticated("The caller's scope signature has expired; verify the token again.")


@dataclass(frozen=True)
class Scope:
    """A bureau, district or school token; `read` tokens may only look, `write` tokens may change."""

    bureau_id: int
    kind: str
    id: int
    access: str = "read"
    token_id: int | None = None
    # Kept so a service can pass the caller's scope on to another one (reporting → accounts).
    signed_until: str | None = field(default=None, compare=False, repr=False)
    signature: str | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Scope:
        if not isinstance(data, dict):
            raise InvalidInput("A scope is required (who is asking).")
        check_signature(data)
        try:
            return cls(
                bureau_id=int(data["bureau_id"]),
                kind=str(data["kind"]),
                id=int(data["id"]),
                access=str(data.get("access", "read")),
                token_id=data.get("token_id"),
                signed_until=data.get("signed_until"),
                signature=data.get("signature"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidInput(f"Malformed scope: {error}") from error

    @classmethod
    def bureau_admin(cls, bureau_id: int) -> Scope:
        """The operator's own scope (command-line tool)."""
        return cls(bureau_id=bureau_id, kind="bureau", id=bureau_id, access="write")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("signed_until", "signature"):
            if data[name] is None:
                del data[name]
        return data

    def covers_school(self, bureau_id: int, district_id: int | None, school_id: int) -> bool:
        if bureau_id != self.bureau_id:
            return False
        if self.kind == "bureau":
            return True
        if self.kind == "district":
            return district_id == self.id
        return self.kind == "school" and school_id == self.id

    def covers_bureau(self, bureau_id: int) -> bool:
        return self.kind == "bureau" and self.bureau_id == bureau_id

    def require_write(self) -> None:
        if self.access != "write":
            raise Forbidden("This token may only read; a write token is needed to change data.")

    def describe(self) -> str:
        return f"{self.kind} {self.id}"
