"""gunicorn settings for the gateway: `gunicorn -c services/gateway/gunicorn.conf.py services.gateway.wsgi:app`.

gthread workers (gunicorn >= 26 has no eventlet worker, and monkey-patching a gthread worker hangs):
GATEWAY_WORKERS processes (2) x GATEWAY_THREADS threads (8); each thread keeps one RPC connection.
The app is loaded in each worker after fork (no preload), so no AMQP connection crosses a fork.

Metrics: every worker writes its samples under PROMETHEUS_MULTIPROC_DIR and /metrics merges them.
If the variable is not set, a fresh temporary directory is created (and removed on exit); it must be
set before any worker imports prometheus_client, which is why it is done here, in the master.

gunicorn's control socket is off unless GATEWAY_CONTROL_SOCKET gives this instance a path of its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from services.gateway import settings

_own_metrics_dir = settings.METRICS_DIR.get() is None
if _own_metrics_dir:
    os.environ[settings.METRICS_DIR.name] = tempfile.mkdtemp(prefix="lianxiao-gateway-metrics-")
METRICS_DIR = Path(os.environ[settings.METRICS_DIR.name])

wsgi_app = "services.gateway.wsgi:app"
bind = [settings.BIND.get()]
worker_class = "gthread"
workers = settings.WORKERS.get()
threads = settings.THREADS.get()
timeout = 30  # a worker silent for this long is restarted; every RPC gives up well before (5 s, roster 30 s)
graceful_timeout = 10
keepalive = 5
accesslog = settings.ACCESS_LOG.get()  # "-" for stdout; never includes Authorization
errorlog = "-"
loglevel = settings.GUNICORN_LOG_LEVEL.get()
proc_name = "lianxiao-gateway"
# gunicorn's control socket (for `gunicornc`) defaults to $HOME/.gunicorn/gunicorn.ctl: one path shared
# by every gateway on a machine (the last one started takes it over), and an error at every start on
# a read-only root filesystem. Off unless GATEWAY_CONTROL_SOCKET names a path of this instance's own.
control_socket = settings.CONTROL_SOCKET.get() or ""
control_socket_disable = not control_socket


def on_starting(server: Any) -> None:
    # Samples of a previous run would be added to this one's.
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    for stale in METRICS_DIR.glob("*.db"):
        stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    close = getattr(app, "close", None)
    if callable(close):
        close()  # closes this worker's RPC connections (and their reply queues) at once


def on_exit(server: Any) -> None:
    if _own_metrics_dir:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)
