"""The container's nginx (deploy/nginx/nginx.conf, entrypoint.sh, Dockerfile) as far as this machine can
check it without an image: the entrypoint writes the media variables and refuses unsafe ones, and real nginx
accepts the configuration it completes (`nginx -t`), with the container's paths moved under a temp folder."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from services.gateway.local_proxy import nginx_binary

REPO = Path(__file__).resolve().parents[2]
NGINX_DIR = REPO / "deploy" / "nginx"
pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx: make system-deps")


def container_files(tmp_path: Path) -> tuple[Path, Path]:
    """nginx.conf and entrypoint.sh with /etc/nginx/lianxiao, /tmp and the web folder under `tmp_path`."""
    etc = tmp_path / "etc"
    (etc / "extra").mkdir(parents=True)
    for name in ("http-context.conf", "gateway-proxy.conf", "media.conf"):
        shutil.copy(NGINX_DIR / name, etc / name)
    run = tmp_path / "run"
    run.mkdir()
    config = (NGINX_DIR / "nginx.conf").read_text()
    config = config.replace("/tmp/", f"{run}/").replace("/etc/nginx/lianxiao", str(etc))
    config = config.replace("/usr/share/lianxiao/web", str(REPO / "web"))
    (tmp_path / "nginx.conf").write_text(config)
    script = (NGINX_DIR / "entrypoint.sh").read_text().replace("/tmp/", f"{run}/")
    script = script.replace("exec nginx -g 'daemon off;'",
                            f"exec {nginx_binary()} -t -q -p {tmp_path} -c {tmp_path / 'nginx.conf'}")
    entrypoint = tmp_path / "entrypoint.sh"
    entrypoint.write_text(script)
    return entrypoint, run / "lianxiao-media.conf"


def test_the_entrypoint_completes_a_configuration_nginx_accepts(tmp_path: Path) -> None:
    entrypoint, variables = container_files(tmp_path)
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", "PLAYBACK_SECRET": "Zm9vYmFy-secret_1", "RECORDINGS_ROOT": "/srv/rec"}
    done = subprocess.run(["sh", str(entrypoint)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert variables.read_text() == 'set $playback_secret "Zm9vYmFy-secret_1";\nset $recordings_root "/srv/rec";\n'
    assert variables.stat().st_mode & 0o077 == 0  # the secret is readable by nginx's user only
    # Without a secret nginx still starts, and the secret nobody knows refuses every /media/ URL.
    done = subprocess.run(["sh", str(entrypoint)], env={"PATH": env["PATH"]}, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and "PLAYBACK_SECRET is not set" in done.stderr
    assert 'set $playback_secret "unset-' in variables.read_text()


@pytest.mark.parametrize("name, value", [
    ("PLAYBACK_SECRET", 'x"; return 200 "open'),
    ("PLAYBACK_SECRET", "with$variable"),
    ("RECORDINGS_ROOT", "relative/path"),
    ("RECORDINGS_ROOT", "/srv/rec; alias /"),
])
def test_the_entrypoint_refuses_values_that_would_change_the_configuration(tmp_path: Path, name: str,
                                                                           value: str) -> None:
    entrypoint, variables = container_files(tmp_path)
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", "PLAYBACK_SECRET": "fine", name: value}
    done = subprocess.run(["sh", str(entrypoint)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 64 and name in done.stderr
    assert not variables.exists()


def test_the_image_carries_the_page_and_the_media_configuration() -> None:
    dockerfile = (NGINX_DIR / "Dockerfile").read_text()
    assert "deploy/nginx/media.conf" in dockerfile and "COPY web/patrol" in dockerfile
    assert 'CMD ["/usr/local/bin/lianxiao-nginx"]' in dockerfile
