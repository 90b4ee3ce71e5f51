"""`make run`: the whole platform on one machine, stopped cleanly with Ctrl-C.

Finds RabbitMQ (starting a local one if it is installed but not running), migrates every service's
database (SQLite files under var/ unless DATABASE_URL names PostgreSQL), starts each nameko service in
its own process, the gateway under gunicorn, the relay data plane and the ingest beside it (RTMP push, RTSP
pull), and prints where things are.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.classroom_relay import ingest_settings, recorder_settings  # noqa: E402
from services.classroom_relay import settings as relay_settings  # noqa: E402
from services.classroom_relay.ingest.rtmp_server import RTMP_MODULE  # noqa: E402
from services.common.config import PLAYBACK_SECRET, RECORDINGS_ROOT, amqp_uri, database_url  # noqa: E402
from services.common.migrations import upgrade  # noqa: E402
from services.gateway import settings as gateway_settings  # noqa: E402
from services.gateway.local_proxy import Media, nginx_binary, nginx_command, write_config  # noqa: E402
from services.platform import LOCAL_METRICS_PORT_BASE, SERVICE_NAMES  # noqa: E402

PYTHON = sys.executable
GATEWAY_BIND = gateway_settings.BIND.get()
# Every port can be moved (two copies on one machine, or a test): METRICS_PORT_BASE and the RELAY_* ports.
METRICS_PORT_BASE = LOCAL_METRICS_PORT_BASE.get()
METRICS_PORTS = {
    service: METRICS_PORT_BASE + offset
    for offset, service in enumerate(SERVICE_NAMES)
}
DATAPLANE_PORTS = {
    "media": relay_settings.MEDIA_PORT.get(),
    "control": relay_settings.CONTROL_PORT.get(),
    # The data plane's metrics port follows the services' unless RELAY_METRICS_PORT is set.
    "metrics": relay_settings.METRICS_PORT.get() if relay_settings.METRICS_PORT.raw() is not None
    else METRICS_PORT_BASE + len(SERVICE_NAMES),
}
# The ingest beside the data plane: its metrics port follows the data plane's unless RELAY_INGEST_METRICS_PORT is set.
INGEST_PORTS = {
    "control": ingest_settings.CONTROL_PORT.get(),
    "rtmp": ingest_settings.RTMP_PORT.get(),
    "metrics": ingest_settings.METRICS_PORT.get() if ingest_settings.METRICS_PORT.raw() is not None
    else METRICS_PORT_BASE + len(SERVICE_NAMES) + 1,
}
# The recorder beside the data plane (docs/recording.md): its metrics port follows the ingest's unless set.
RECORDER_PORTS = {
    "control": recorder_settings.CONTROL_PORT.get(),
    "metrics": recorder_settings.METRICS_PORT.get() if recorder_settings.METRICS_PORT.raw() is not None
    else METRICS_PORT_BASE + len(SERVICE_NAMES) + 2,
}
# Where encoders and branch classrooms reach the relay; 127.0.0.1 keeps a laptop's relay private.
RELAY_MEDIA_HOST = relay_settings.MEDIA_HOST.get()


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def broker_address() -> str:
    uri = urlparse(amqp_uri())
    return f"amqp://{uri.hostname or '127.0.0.1'}:{uri.port or 5672}{uri.path or '/'}"


def ensure_broker() -> None:
    uri = urlparse(amqp_uri())
    host, port = uri.hostname or "127.0.0.1", uri.port or 5672
    if port_answers(host, port):
        return
    local = host in ("127.0.0.1", "localhost")
    if local and shutil.which("rabbitmq-server"):
        print(f"RabbitMQ is not answering on {host}:{port}; starting a local one (rabbitmq-server -detached)…")
        subprocess.run(["rabbitmq-server", "-detached"], check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if port_answers(host, port):
                return
            time.sleep(1)
    sys.exit(
        f"No RabbitMQ answers at {host}:{port}: install RabbitMQ (apt-get install rabbitmq-server) "
        "or set AMQP_URI to a broker that runs."
    )


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def stop_all(processes: Iterable[subprocess.Popen], grace_seconds: float = 15.0) -> None:
    """SIGTERM every part's process group, wait until each group is empty, SIGKILL what is left."""
    processes = list(processes)
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        while group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if group_alive(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


def dataplane_available() -> bool:
    return (REPO / "services" / "classroom_relay" / "dataplane" / "__main__.py").exists()


def ingest_available() -> str | None:
    """Why the ingest cannot run here, or None (make system-deps installs both; see mk/ingest.mk)."""
    if not Path(RTMP_MODULE).exists():
        return f"nginx's RTMP module is missing ({RTMP_MODULE}; apt-get install libnginx-mod-rtmp)"
    if shutil.which("ffmpeg") is None:
        return "ffmpeg is missing (apt-get install ffmpeg)"
    return None


def playback_secret(path: Path) -> str:
    """PLAYBACK_SECRET, or the one generated into `path` (mode 0600) on the first run and kept, so signed
    playback URLs outlive a restart of `make run`."""
    configured = PLAYBACK_SECRET.get()
    if configured:
        return configured
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def main() -> None:
    if nginx_binary() is None:
        sys.exit("nginx is not installed; `make run` installs it (make system-deps), or: apt-get install nginx")
    ensure_broker()
    (REPO / "var").mkdir(exist_ok=True)
    for service in SERVICE_NAMES:
        upgrade(service)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    commands: dict[str, list[str]] = {}
    for service, port in METRICS_PORTS.items():
        commands[service] = [PYTHON, "-m", "services.common.runner", service]
        env[f"{service.upper()}_METRICS_PORT"] = str(port)
    env.setdefault("RELAY_CONTROL_ADDRESS", f"127.0.0.1:{DATAPLANE_PORTS['control']}")
    # Services accept only scopes accounts signed with this (services/common/scope.py): a fresh one per run.
    env.setdefault("LIANXIAO_SCOPE_SECRET", secrets.token_hex(32))
    # The control channel is always authenticated: unless RELAY_CONTROL_SECRET is given, the data plane
    # generates its secret into this file (mode 0600) and the control plane reads it from there.
    env.setdefault("RELAY_CONTROL_SECRET_FILE", str(REPO / relay_settings.CONTROL_SECRET_FILE.default))
    if not env.get("RELAY_JOIN_SECRETS"):
        # One machine for trying things out: the relay's built-in development secret signs join tokens.
        # Production sets RELAY_JOIN_SECRETS (the service refuses to start without it otherwise).
        env["RELAY_ALLOW_DEV_SECRET"] = "1"
        print("RELAY_JOIN_SECRETS is not set: join tokens are signed with a development secret.")
    # nginx checks signed playback URLs with the secret the services sign them with (docs/recording.md).
    env["PLAYBACK_SECRET"] = playback_secret(REPO / "var" / "playback_secret")
    recordings = Path(RECORDINGS_ROOT.get())
    recordings = recordings if recordings.is_absolute() else REPO / recordings
    recordings.mkdir(parents=True, exist_ok=True)
    env["RECORDINGS_ROOT"] = str(recordings)
    # Clients reach nginx on GATEWAY_BIND; gunicorn listens only on a private Unix socket behind it.
    run_dir = Path(tempfile.mkdtemp(prefix="lianxiao-run-"))
    gateway_socket = run_dir / "gateway.sock"
    commands["gateway"] = [
        str(Path(PYTHON).with_name("gunicorn")), "-c", "services/gateway/gunicorn.conf.py",
        "--bind", f"unix:{gateway_socket}", "services.gateway.wsgi:app",
    ]
    media = Media(recordings, env["PLAYBACK_SECRET"])
    commands["nginx"] = nginx_command(write_config(run_dir, GATEWAY_BIND, gateway_socket, media=media))
    if dataplane_available():
        commands["relay-dataplane"] = [
            PYTHON, "-m", "services.classroom_relay.dataplane",
            "--media-host", RELAY_MEDIA_HOST,
            "--media-port", str(DATAPLANE_PORTS["media"]),
            "--control-port", str(DATAPLANE_PORTS["control"]),
            "--metrics-port", str(DATAPLANE_PORTS["metrics"]),
        ]
        missing = ingest_available()
        if missing is None:
            # Classrooms publish RTMP where the data plane's media is (127.0.0.1 unless RELAY_MEDIA_HOST says).
            env.setdefault(ingest_settings.INGESTS.name, f"default=127.0.0.1:{INGEST_PORTS['control']}")
            commands["relay-ingest"] = [
                PYTHON, "-m", "services.classroom_relay.ingest",
                "--control-port", str(INGEST_PORTS["control"]),
                "--metrics-port", str(INGEST_PORTS["metrics"]),
                "--rtmp-listen", RELAY_MEDIA_HOST,
                "--rtmp-port", str(INGEST_PORTS["rtmp"]),
            ]
        else:
            print(f"No RTMP/RTSP ingest: {missing}.")
        if shutil.which("ffmpeg"):
            # Attached to every live session (patrol, 录播); the data plane sends it RTP over loopback.
            env.setdefault(relay_settings.RECORDERS.name, f"default=127.0.0.1:{RECORDER_PORTS['control']}")
            commands["relay-recorder"] = [
                PYTHON, "-m", "services.classroom_relay.recorder",
                "--control-port", str(RECORDER_PORTS["control"]),
                "--metrics-port", str(RECORDER_PORTS["metrics"]),
                "--root", str(recordings),
            ]
        else:
            print("No recorder: ffmpeg is not installed (make system-deps).")
    processes: dict[str, subprocess.Popen] = {}
    for name, command in commands.items():
        # Each part in its own process group, so stopping it also stops what it started (gunicorn's
        # workers): a master that exits first must not leave an orphaned worker behind.
        processes[name] = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)

    print(
        "\nlianxiao is running:\n"
        f"  API (nginx → gateway) http://{GATEWAY_BIND}/  (OpenAPI: /openapi.json, health: /healthz, /readyz)\n"
        f"  gateway metrics   http://{GATEWAY_BIND}/metrics\n"
        f"  patrol page (巡课) http://{GATEWAY_BIND}/patrol/  (a bureau or district token from `make demo`)\n"
        f"  recordings        {recordings}  (served signed under http://{GATEWAY_BIND}/media/)\n"
        + "".join(f"  {name:<17} metrics http://127.0.0.1:{port}/metrics\n" for name, port in METRICS_PORTS.items())
        + (f"  relay data plane  media udp://{RELAY_MEDIA_HOST}:{DATAPLANE_PORTS['media']}, "
           f"metrics http://127.0.0.1:{DATAPLANE_PORTS['metrics']}/metrics\n" if dataplane_available() else "")
        + (f"  relay ingest      rtmp://{RELAY_MEDIA_HOST}:{INGEST_PORTS['rtmp']}/live, "
           f"metrics http://127.0.0.1:{INGEST_PORTS['metrics']}/metrics\n" if "relay-ingest" in commands else "")
        + (f"  relay recorder    {recordings}, control 127.0.0.1:{RECORDER_PORTS['control']}, "
           f"metrics http://127.0.0.1:{RECORDER_PORTS['metrics']}/metrics\n" if "relay-recorder" in commands else "")
        + f"  databases         {database_url('{service}')}\n"
        f"  broker            {broker_address()}\n"
        "Try `make demo` in another terminal for a fictional bureau and a token. Ctrl-C stops everything.\n",
        flush=True,
    )

    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while not stopping:
        for name, process in processes.items():
            if process.poll() is not None:
                print(f"{name} exited with status {process.returncode}; stopping the platform.", file=sys.stderr)
                stopping, exit_code = True, 1
                break
        time.sleep(0.5)
    stop_all(processes.values())
    shutil.rmtree(run_dir, ignore_errors=True)
    print("lianxiao stopped.")
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
