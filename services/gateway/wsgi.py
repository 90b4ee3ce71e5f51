"""WSGI entry point for gunicorn: `gunicorn -c services/gateway/gunicorn.conf.py services.gateway.wsgi:app`."""

from __future__ import annotations

import logging

import services  # noqa: F401  (silences eventlet's notice before nameko imports eventlet)
from services.common.config import LOG_LEVEL
from services.gateway.app import create_app

logging.basicConfig(
    level=LOG_LEVEL.get(),
    format="%(asctime)s gateway[%(process)d] %(levelname)s %(name)s: %(message)s",
)

app = create_app()
