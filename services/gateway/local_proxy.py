"""nginx in front of the gateway on one machine (`make run`, tests): its configuration and command.

Every deployment puts nginx between clients and gunicorn (docs: deploy/README.md), because a gunicorn
gthread worker gives each connection a thread for as long as the client takes to send its request: 16
clients sending a header byte every 5 s held every thread of `make run`'s gateway (issue 12, item 3).
The directives that matter live once, in deploy/nginx/*.conf, and are included here, by the compose
file and by the Kubernetes ConfigMap; this module only adds what differs on one machine (the listen
address, gunicorn's Unix socket, paths under a private directory).
"""

from __future__ import annotations

import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from services.common.config import REPO_ROOT

NGINX_CONFIG_DIR = REPO_ROOT / "deploy" / "nginx"
WEB_ROOT = REPO_ROOT / "web"
# What may stand inside a double-quoted nginx string without being read as a variable or a directive's end.
_NGINX_SAFE = re.compile(r'^[^"\\$;{}\s\x00-\x1f]+$')


@dataclass(frozen=True)
class Media:
    """What deploy/nginx/media.conf needs: where recordings are and the secret playback URLs are signed with."""

    recordings_root: Path
    playback_secret: str


def _quoted(value: str, what: str) -> str:
    if not _NGINX_SAFE.match(value):
        raise ValueError(f"{what} must not contain quotes, backslashes, '$', ';', braces or whitespace")
    return f'"{value}"'


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (str(path) for path in (Path("/usr/sbin/nginx"), Path("/usr/local/sbin/nginx")) if path.exists()), None
    )


def write_config(run_dir: Path, listen: str, upstream_socket: Path, access_log: bool = False,
                 media: Media | None = None, web_root: Path = WEB_ROOT) -> Path:
    """An nginx.conf under `run_dir` (made readable for nginx's worker user) that proxies to the socket,
    serves the patrol page from `web_root` and, with `media`, signed recordings (deploy/nginx/media.conf;
    without it every /media/ URL is refused, since no secret signs them)."""
    secret = media.playback_secret if media else ""
    # Without a secret every signature is refused: media.conf compares against MD5(... + " " + secret) of a
    # random value nobody knows.
    secret_value = _quoted(secret, "PLAYBACK_SECRET") if secret else f'"unset-{secrets.token_hex(16)}"'
    recordings = _quoted(str(media.recordings_root.resolve()), "RECORDINGS_ROOT") if media else '"/nonexistent"'
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o755)  # a root master runs workers as `nobody`, which must reach the socket and temp files
    temp = {name: run_dir / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    config = f"""# Written by services/gateway/local_proxy.py for one machine; the shared part is included.
worker_processes 1;
pid {run_dir / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    include {NGINX_CONFIG_DIR / "http-context.conf"};
    access_log {"/dev/stdout" if access_log else "off"};
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    upstream lianxiao_gateway {{
        server unix:{upstream_socket};
        keepalive 16;
    }}
    server {{
        listen {listen};
        set $recordings_root {recordings};
        set $playback_secret {secret_value};
        set $web_root {_quoted(str(web_root.resolve()), "the web folder")};
        include {NGINX_CONFIG_DIR / "media.conf"};
        include {NGINX_CONFIG_DIR / "gateway-proxy.conf"};
    }}
}}
"""
    path = run_dir / "nginx.conf"
    path.touch(mode=0o600)  # it holds PLAYBACK_SECRET; only nginx's master (this user) reads it
    path.chmod(0o600)
    path.write_text(config)
    return path


def nginx_command(config: Path) -> list[str]:
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed: `make system-deps` installs it (apt-get install nginx).")
    return [binary, "-p", str(config.parent), "-c", str(config), "-e", "stderr", "-g", "daemon off;"]
