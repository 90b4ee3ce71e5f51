"""nameko entrypoints with the platform's conventions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nameko.rpc import rpc as nameko_rpc

from services.common.errors import LianxiaoError


def rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """An RPC entrypoint whose domain errors are expected answers (logged as warnings, not crashes)."""
    return nameko_rpc(expected_exceptions=LianxiaoError)(method)
