"""Activities' errors: the shared typed errors (they keep their type over RPC)."""

from services.common.errors import Conflict, Forbidden, InvalidInput, NotFound


class UnknownTeacher(NotFound):
    """The teacher was never announced by accounts (or not yet: accounts' events are asynchronous)."""


__all__ = ["Conflict", "Forbidden", "InvalidInput", "NotFound", "UnknownTeacher"]
