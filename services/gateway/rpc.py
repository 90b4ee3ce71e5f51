"""RPC from gunicorn threads to the nameko services: one long-lived client per thread, every call bounded.

Why this shape (each alternative was measured on this stack): a proxy per request leaks reply queues
and is ~4x slower; one proxy shared by threads deadlocks; eventlet monkey-patching inside a gthread
worker hangs. So each worker thread lazily opens its own client (one AMQP connection, one reply queue) and keeps it. A
client that saw any transport error or timeout is closed and replaced on the next call, because
nameko's standalone consumer cannot be trusted after one (a late reply may still arrive on it).

Every call has a timeout (5 s by default): a service that is stopped, overloaded or unreachable gives
`ServiceUnavailable` (a 503 problem) within the timeout plus at most one quick publish retry, never a
hang. Request messages carry the same time as their AMQP expiration, so a request nobody picked up in
time is dropped by the broker instead of running after the caller has been told it failed.
Domain errors (`LianxiaoError`) are answers, not failures: they pass through and keep the client.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from nameko.containers import WorkerContext
from nameko.exceptions import RemoteError, RpcTimeout, UnknownService
from nameko.rpc import ServiceProxy
from nameko.standalone.rpc import SingleThreadedReplyListener, StandaloneProxyBase

from services.common.errors import LianxiaoError, ServiceUnavailable
from services.platform import SERVICES

# Importing each service's exceptions registers its typed errors, so they arrive here as themselves
# (e.g. the relay's AdmissionRefused → 409) instead of as an untyped RemoteError (→ 500).
for _service in SERVICES:
    importlib.import_module(_service.exceptions_module)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 5.0
# One immediate retry covers a stale pooled publisher connection (e.g. after a broker restart);
# more retries would only stretch the time before the caller hears "unavailable".
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}


class ThreadRpcClient:
    """One thread's connection to the cluster: nameko's standalone reply listener, kept open."""

    def __init__(self, config: dict[str, Any], timeout: float) -> None:
        container = StandaloneProxyBase.ServiceContainer(config)
        self.worker_ctx = WorkerContext(container, service=None, entrypoint=StandaloneProxyBase.Dummy)
        self.reply_listener = SingleThreadedReplyListener(timeout=timeout).bind(container)
        self.reply_listener.setup()  # connects and declares this thread's reply queue

    def call(self, service: str, method: str, args: tuple, kwargs: dict, timeout: float) -> Any:
        # The listener waits with its consumer's timeout; set it per call so one client serves
        # quick health checks and slow roster imports alike.
        self.reply_listener.queue_consumer.timeout = timeout
        proxy = ServiceProxy(
            self.worker_ctx, service, self.reply_listener,
            expiration=timeout, retry_policy=PUBLISH_RETRY_POLICY,
        )
        return getattr(proxy, method)(*args, **kwargs)

    def close(self) -> None:
        try:
            self.reply_listener.stop()
        except Exception:  # closing a broken connection may fail; it is being discarded anyway
            log.debug("closing an RPC client failed", exc_info=True)


class RpcPool:
    """Thread-local `ThreadRpcClient`s for one gateway process; `call` never blocks past its timeout."""

    def __init__(
        self,
        amqp_uri: str,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        observe: Callable[[str, str, str, float], None] | None = None,
    ) -> None:
        self.config = {"AMQP_URI": amqp_uri, "serializer": "json"}
        self.timeout = timeout
        self.observe = observe
        self._local = threading.local()
        self._clients: set[ThreadRpcClient] = set()
        self._lock = threading.Lock()

    def _client(self) -> ThreadRpcClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = ThreadRpcClient(self.config, self.timeout)
            self._local.client = client
            with self._lock:
                self._clients.add(client)
        return client

    def _drop(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with self._lock:
                self._clients.discard(client)
            client.close()

    def call(self, service: str, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call `service.method(*args, **kwargs)`; domain errors pass through, failures become 503."""
        timeout = timeout or self.timeout
        started = time.perf_counter()
        outcome = "ok"
        try:
            return self._client().call(service, method, args, kwargs, timeout)
        except LianxiaoError as error:
            outcome = type(error).__name__
            raise
        except RemoteError as error:
            # The service answered with an error it did not type: a bug there, not bad input here.
            outcome = "RemoteError"
            log.error("%s.%s failed remotely: %s", service, method, error.exc_type)
            raise
        except RpcTimeout as error:
            outcome = "timeout"
            self._drop()
            raise ServiceUnavailable(
                f"The {service} service did not answer within {timeout:g} s; please retry shortly."
            ) from error
        except UnknownService as error:
            outcome = "unknown_service"
            self._drop()
            raise ServiceUnavailable(f"The {service} service is not running; please retry shortly.") from error
        except Exception as error:  # broker unreachable, connection lost, consumer disconnected...
            outcome = "unavailable"
            log.warning("RPC %s.%s failed: %s: %s", service, method, type(error).__name__, error)
            self._drop()
            raise ServiceUnavailable(
                f"The {service} service cannot be reached right now; please retry shortly."
            ) from error
        finally:
            if self.observe is not None:
                self.observe(service, method, outcome, time.perf_counter() - started)

    def close(self) -> None:
        """Close every thread's client (worker shutdown)."""
        with self._lock:
            clients, self._clients = self._clients, set()
        for client in clients:
            client.close()
