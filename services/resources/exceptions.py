"""The resources service's errors: the shared typed errors (the gateway maps them by status)."""

from services.common.errors import Conflict, Forbidden, InvalidInput, NotFound, ServiceUnavailable


class PlaybackNotConfigured(ServiceUnavailable):
    """No PLAYBACK_SECRET is set, so no URL nginx would accept can be signed."""


__all__ = ["Conflict", "Forbidden", "InvalidInput", "NotFound", "PlaybackNotConfigured", "ServiceUnavailable"]
