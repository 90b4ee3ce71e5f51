"""nameko entrypoints with the platform's conventions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nameko.amqp.publish import Publisher
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_SERIALIZER,
    LOGIN_METHOD_CONFIG_KEY,
    SERIALIZER_CONFIG_KEY,
)
from nameko.rpc import Responder, Rpc, get_rpc_exchange

from services.common.errors import LianxiaoError

log = logging.getLogger(__name__)


class UnconfirmedReplyPublisher(Publisher):
    # A reply is only useful to a caller that is still waiting; if the broker loses it, the caller's
    # timeout answers 503 and it retries (handlers are idempotent). Confirming each reply cost a
    # round trip and broker CPU on every call.
    use_confirms = False


class ReplyResponder(Responder):
    publisher_cls = UnconfirmedReplyPublisher


class ResilientRpc(Rpc):
    """An RPC entrypoint that survives a broker outage while it answers.

    nameko's own entrypoint lets a failed reply publish (or ack) escape into the container, which then
    kills the whole service. The request was not acknowledged, so the broker redelivers it once it is
    back; handlers are idempotent, so logging the failure and carrying on is the right answer.
    """

    def handle_result(self, message: Any, worker_ctx: Any, result: Any, exc_info: Any) -> tuple[Any, Any]:
        config = self.container.config
        try:
            responder = ReplyResponder(
                config[AMQP_URI_CONFIG_KEY], get_rpc_exchange(config),
                config.get(SERIALIZER_CONFIG_KEY, DEFAULT_SERIALIZER), message,
                ssl=config.get(AMQP_SSL_CONFIG_KEY), login_method=config.get(LOGIN_METHOD_CONFIG_KEY),
            )
            result, exc_info = responder.send_response(result, exc_info)
            self.rpc_consumer.queue_consumer.ack_message(message)
            return result, exc_info
        except Exception:
            log.warning("could not answer %s (broker unreachable?); the request will be redelivered",
                        worker_ctx, exc_info=True)
            return result, exc_info


def rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """An RPC entrypoint whose domain errors are expected answers (logged as warnings, not crashes)."""
    return ResilientRpc.decorator(expected_exceptions=LianxiaoError)(method)
