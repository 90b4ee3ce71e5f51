"""The RTMP server classrooms publish to: nginx with Debian's RTMP module (`libnginx-mod-rtmp`), and the
HTTP callback that decides, per publish, whether its stream key may publish now.

nginx-rtmp rather than ffmpeg `-listen 1`: one port for every classroom (a school's firewall opens 1935
once), any number of publishers at once, a publish is admitted or refused by `on_publish` before a byte of
media is accepted, and nginx survives a host that disconnects, a wrong key or a flood of attempts — an
ffmpeg listener serves one connection and exits. Only 127.0.0.1 may play the streams back (the ingest's own
ffmpeg does); nobody else can read a classroom's stream from it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .pipelines import stop_child
from .supervisor import Supervisor

log = logging.getLogger("lianxiao.ingest")

RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"
APPLICATION = "live"
MAX_CALLBACK_BYTES = 16 * 1024


def nginx_config(prefix: Path, listen: str, port: int, callback_port: int) -> str:
    callback = f"http://127.0.0.1:{callback_port}"
    return f"""load_module {RTMP_MODULE};
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
rtmp {{
    server {{
        listen {listen}:{port};
        chunk_size 4096;
        timeout 15s;
        access_log off;  # its lines carry stream names, i.e. the keys
        application {APPLICATION} {{
            live on;
            record off;
            idle_streams off;
            drop_idle_publisher 10s;
            on_publish {callback}/rtmp/publish;
            on_publish_done {callback}/rtmp/publish_done;
            notify_method post;
            allow play 127.0.0.1;
            deny play all;
        }}
    }}
}}
"""


class _CallbackHandler(BaseHTTPRequestHandler):
    supervisor: Supervisor

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_CALLBACK_BYTES:
            self._answer(413, "too large")
            return
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        name = (form.get("name") or [""])[0]
        if self.path == "/rtmp/publish":
            if (form.get("app") or [""])[0] != APPLICATION:
                allowed, reason = False, "wrong_application"
                self.supervisor.count_refusal(reason)
            else:
                allowed, reason = self.supervisor.on_publish(name)
            self._answer(200 if allowed else 403, reason)
        elif self.path == "/rtmp/publish_done":
            self.supervisor.on_publish_done(name)
            self._answer(200, "ok")
        else:
            self._answer(404, "unknown callback")

    def _answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return  # stream keys are in the request: never logged


class RtmpServer:
    """nginx-rtmp on `listen:port` (0: a free port is chosen) and its callback server on 127.0.0.1."""

    def __init__(self, supervisor: Supervisor, listen: str = "0.0.0.0", port: int = 1935,
                 nginx: str | None = None) -> None:
        self.supervisor = supervisor
        self.listen, self.port = listen, port
        self.nginx = nginx or shutil.which("nginx") or "/usr/sbin/nginx"
        handler = type("Handler", (_CallbackHandler,), {"supervisor": supervisor})
        self.callbacks = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.callbacks.daemon_threads = True
        self.prefix = Path(tempfile.mkdtemp(prefix="lianxiao-rtmp-"))
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        if not Path(RTMP_MODULE).exists():
            raise RuntimeError(f"{RTMP_MODULE} is missing: apt-get install libnginx-mod-rtmp (make system-deps)")
        threading.Thread(target=self.callbacks.serve_forever, name="rtmp-callbacks", daemon=True).start()
        config = self.prefix / "nginx.conf"
        config.write_text(nginx_config(self.prefix, self.listen, self.port, self.callbacks.server_address[1]))
        self.process = subprocess.Popen([self.nginx, "-p", str(self.prefix), "-c", str(config)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                errors = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"nginx (RTMP) exited {self.process.returncode}: {errors.strip()}")
            if self._listening():
                return
            time.sleep(0.05)
        raise RuntimeError(f"nginx (RTMP) did not listen on {self.listen}:{self.port} within {timeout} s")

    def _listening(self) -> bool:
        import socket

        host = "127.0.0.1" if self.listen in ("0.0.0.0", "") else self.listen
        with contextlib.suppress(OSError), socket.create_connection((host, self.port), timeout=0.2):
            return True
        return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        stop_child(self.process, grace_seconds=5.0)
        self.callbacks.shutdown()
        self.callbacks.server_close()
        shutil.rmtree(self.prefix, ignore_errors=True)
