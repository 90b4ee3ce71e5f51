"""nginx in front of the gateway on one machine (`make run`, tests): its configuration and command.

Every deployment puts nginx between clients and gunicorn (docs: deploy/README.md), because a gunicorn
gthread worker gives each connection a thread for as long as the client takes to send its request: 16
clients sending a header byte every 5 s held every thread of `make run`'s gateway (issue 12, item 3).
The directives that matter live once, in deploy/nginx/*.conf, and are included here, by the compose
file and by the Kubernetes ConfigMap; this module only adds what differs on one machine (the listen
address, gunicorn's Unix socket, paths under a private directory).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from services.common.config import REPO_ROOT

NGINX_CONFIG_DIR = REPO_ROOT / "deploy" / "nginx"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (str(path) for path in (Path("/usr/sbin/nginx"), Path("/usr/local/sbin/nginx")) if path.exists()), None
    )


def write_config(run_dir: Path, listen: str, upstream_socket: Path, access_log: bool = False) -> Path:
    """An nginx.conf under `run_dir` (made readable for nginx's worker user) that proxies to the socket."""
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
        include {NGINX_CONFIG_DIR / "gateway-proxy.conf"};
    }}
}}
"""
    path = run_dir / "nginx.conf"
    path.write_text(config)
    return path


def nginx_command(config: Path) -> list[str]:
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed: `make system-deps` installs it (apt-get install nginx).")
    return [binary, "-p", str(config.parent), "-c", str(config), "-e", "stderr", "-g", "daemon off;"]
