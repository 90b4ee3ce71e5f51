"""Accounts' errors: the shared typed errors, plus the ones only accounts raises."""

from services.common.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated


class RosterRejected(InvalidInput):
    """A roster file with any bad row: nothing of it was applied; `fields["rows"]` lists every problem."""


class TokenInvalid(Unauthenticated):
    """Unknown, expired or revoked token (which one is not told to the caller)."""


__all__ = ["Conflict", "Forbidden", "InvalidInput", "NotFound", "RosterRejected", "TokenInvalid"]
