"""Accounts' errors: the shared typed errors, plus the ones only accounts raises."""

from services.common.errors import Conflict, Forbidden, InvalidInput, LianxiaoError, NotFound, Unauthenticated


class RosterRejected(InvalidInput):
    """A roster file with any bad row: nothing of it was applied; `fields["rows"]` lists every problem."""


class TooManyTokens(LianxiaoError):
    """A scope asked for more tokens than it may have or mint in an hour (429; nothing was issued)."""

    status = 429
    title = "Too many tokens"


class TokenInvalid(Unauthenticated):
    """Unknown, expired or revoked token (which one is not told to the caller)."""


__all__ = ["Conflict", "Forbidden", "InvalidInput", "NotFound", "RosterRejected", "TokenInvalid", "TooManyTokens"]
