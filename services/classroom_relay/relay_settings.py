"""The relay control plane's settings, read once through the typed declarations in settings.py.

`RelaySettings` is what the domain modules receive (tests build one directly); `settings_from` fills it
from nameko config first, then the environment (services/common/settings.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.classroom_relay import settings
from services.classroom_relay.exceptions import InvalidInput

DEV_JOIN_SECRET = "dev-only-join-secret"  # only with RELAY_ALLOW_DEV_SECRET=1 (tests, `make run`)


@dataclass(frozen=True)
class RelaySettings:
    """Join-token secrets, link headroom, stream-health thresholds."""

    join_secrets: list[str] = field(default_factory=lambda: [DEV_JOIN_SECRET])
    headroom: float = settings.ADMISSION_HEADROOM.default
    branch_target_bps: int = settings.BRANCH_TARGET_BPS.default
    loss_degraded_ratio: float = settings.LOSS_DEGRADED_RATIO.default
    # A branch is "below target" when it gets less than this share of what it could get.
    rate_degraded_share: float = 0.5


def settings_from(config: Mapping[str, Any] | None = None) -> RelaySettings:
    """The settings from nameko config, then the environment.

    Without RELAY_JOIN_SECRETS this raises ValueError (the service does not start): a well-known
    default secret would let anyone mint join tokens. RELAY_ALLOW_DEV_SECRET=1 allows the built-in
    development secret, for tests and a single development machine.
    """
    secrets_text = settings.JOIN_SECRETS.get(config)
    secrets = [part.strip() for part in secrets_text.split(",") if part.strip()] if secrets_text else []
    if not secrets and not settings.ALLOW_DEV_SECRET.get(config):
        raise ValueError(
            "RELAY_JOIN_SECRETS is not set: give the relay's join-token secret(s) (comma-separated, the first "
            "signs), or set RELAY_ALLOW_DEV_SECRET=1 on a development machine."
        )
    headroom = settings.ADMISSION_HEADROOM.get(config)
    if not 0 < headroom <= 1:
        raise InvalidInput(f"ADMISSION_HEADROOM must be in (0, 1], not {headroom}.")
    return RelaySettings(
        join_secrets=secrets or [DEV_JOIN_SECRET],
        headroom=headroom,
        branch_target_bps=settings.BRANCH_TARGET_BPS.get(config),
        loss_degraded_ratio=settings.LOSS_DEGRADED_RATIO.get(config),
    )
