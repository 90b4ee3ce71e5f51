"""nameko entrypoints with the platform's conventions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nameko.rpc import Rpc

from services.common.errors import LianxiaoError

log = logging.getLogger(__name__)


class ResilientRpc(Rpc):
    """An RPC entrypoint that survives a broker outage while it answers.

    nameko's own entrypoint lets a failed reply publish (or ack) escape into the container, which then
    kills the whole service. The request was not acknowledged, so the broker redelivers it once it is
    back; handlers are idempotent, so logging the failure and carrying on is the right answer.
    """

    def handle_result(self, message: Any, worker_ctx: Any, result: Any, exc_info: Any) -> tuple[Any, Any]:
        try:
            return super().handle_result(message, worker_ctx, result, exc_info)
        except Exception:
            log.warning("could not answer %s (broker unreachable?); the request will be redelivered",
                        worker_ctx, exc_info=True)
            return result, exc_info


def rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """An RPC entrypoint whose domain errors are expected answers (logged as warnings, not crashes)."""
    return ResilientRpc.decorator(expected_exceptions=LianxiaoError)(method)
