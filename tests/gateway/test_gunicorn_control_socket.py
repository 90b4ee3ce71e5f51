"""gunicorn's control socket: off by default (its default path, $HOME/.gunicorn/gunicorn.ctl, is shared by
every gateway on a machine and read-only in the container), on a path of the instance's own when asked."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from gunicorn.config import Config

GUNICORN_CONF = Path(__file__).resolve().parents[2] / "services" / "gateway" / "gunicorn.conf.py"


def gateway_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> Config:
    """gunicorn's own Config loaded from the gateway's settings file, as `gunicorn -c` does."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = runpy.run_path(str(GUNICORN_CONF))
    config = Config()
    for name, value in settings.items():
        if name in config.settings:
            config.set(name, value)
    return config


def test_control_socket_is_off_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GATEWAY_CONTROL_SOCKET", raising=False)
    config = gateway_config(monkeypatch, tmp_path)
    assert config.control_socket_disable is True


def test_control_socket_on_a_path_of_the_instance(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    socket_path = str(tmp_path / "run" / "gateway.ctl")
    config = gateway_config(monkeypatch, tmp_path, GATEWAY_CONTROL_SOCKET=socket_path)
    assert config.control_socket_disable is False
    assert config.control_socket == socket_path
