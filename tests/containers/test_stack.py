"""The whole platform in containers: RabbitMQ and PostgreSQL from the infrastructure image, migrations,
the five services, the relay data plane and the gateway from the application image, the recorder from the
ingest image (ffmpeg), nginx in front of the gateway from its own image — all started at once
(as podman-compose does, without waiting), read-only, every process as its own user without capabilities.
Then: /readyz, the demo bureau, teachers and the resource library through the gateway, the recorder's
control channel and its write access to the recordings volume, an RTP stream from an ffmpeg encoder
through the containerised data plane to an ffmpeg receiver at a branch, recorded: live on the patrol list
and its HLS through nginx's /media/, then a resource of the library whose MP4 and HLS nginx serves.
Everything on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

from tests.ops.ops_helpers import wait_until
from tests.relay.relay_harness import free_udp_port_pair
from tests.relay.test_end_to_end_ffmpeg import FULL_FRAME_BYTES, HIGH_SSRC, _decoded_frame_sizes, _encoder_output

from .podman_stack import APP_SERVICES, RECORDINGS_ROOT, REPO, Stack, podman

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.timeout(420)

APP_IMAGE = os.environ.get("LIANXIAO_IMAGE", "localhost/lianxiao:local")
INFRA_IMAGE = os.environ.get("LIANXIAO_INFRA_IMAGE", "localhost/lianxiao-infra:local")
NGINX_IMAGE = os.environ.get("LIANXIAO_NGINX_IMAGE", "localhost/lianxiao-nginx:local")
INGEST_IMAGE = os.environ.get("LIANXIAO_INGEST_IMAGE", "localhost/lianxiao-ingest:local")
CONTAINERS = ("rabbitmq", "postgres", "prometheus", *APP_SERVICES, "nginx")
READY_SECONDS = 150
# The application first, then what it uses; Kubernetes' default grace period is 30 s.
STOP_ORDER = ("nginx", "gateway", "accounts", "activities", "reporting", "resources", "classroom-relay", "recorder",
              "relay-dataplane", "prometheus", "rabbitmq", "postgres")
STOP_GRACE_SECONDS = 20
# What no process may log in a read-only container without capabilities (gunicorn's control socket was one).
FORBIDDEN_IN_LOGS = ("Read-only file system", "[Errno 30]", "Permission denied", "[Errno 13]",
                     "Operation not permitted", "Control server error", "Failed to start control socket")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    # Selected on purpose (make test-containers installs both): a missing tool fails instead of skipping.
    assert shutil.which("podman"), "podman is not installed: make containers-host"
    assert FFMPEG, "ffmpeg is not installed: make system-deps"
    # The run id labels everything the run creates (deploy/containers/test-containers.sh cleans up by it too).
    run = os.environ.get("LIANXIAO_CONTAINERS_RUN") or uuid.uuid4().hex[:8]
    running = Stack(run=run, app_image=APP_IMAGE, infra_image=INFRA_IMAGE, nginx_image=NGINX_IMAGE,
                    ingest_image=INGEST_IMAGE)
    try:
        yield running
    finally:
        logs = Path(os.environ.get("LIANXIAO_CONTAINERS_LOGS") or tmp_path / "logs")
        logs.mkdir(parents=True, exist_ok=True)
        for service in CONTAINERS:
            if running.name(service) in running.containers:
                (logs / f"{service}.log").write_text(running.logs(service))
        print(f"\ncontainers: logs of every container in {logs}")
        assert running.remove() == [], "containers or volumes of the run were left behind"


def problems(logs: str) -> list[str]:
    return [line for line in logs.splitlines() if any(word in line for word in FORBIDDEN_IN_LOGS)]


def prometheus_config(stack: Stack, directory: Path) -> Path:
    """The repository's rules and a scrape job per process of the run (2 s), for the containerised Prometheus."""
    shutil.copytree(REPO / "deploy" / "prometheus" / "rules", directory / "rules")
    jobs = [{"job_name": name, "scrape_interval": "2s", "static_configs": [{"targets": [target]}]}
            for name, target in stack.scrape_targets().items()]
    config = {"global": {"evaluation_interval": "2s"}, "rule_files": ["rules/*.yml"], "scrape_configs": jobs}
    (directory / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    for path in [directory, *directory.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by the image's prometheus user
    return directory


def targets_up(url: str) -> dict[str, str]:
    answer = requests.get(f"{url}/api/v1/targets", timeout=5).json()
    return {target["labels"]["job"]: target["health"] for target in answer["data"]["activeTargets"]}


def call(method: str, url: str, token: str, body: Any = None) -> requests.Response:
    return requests.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=15)


def recorder_hello(stack: Stack) -> dict[str, Any]:
    """The recorder's control channel as the relay's control plane opens it: `hello` with the control secret."""
    with socket.create_connection(("127.0.0.1", stack.ports["recorder_control"]), timeout=10) as connection:
        connection.sendall(json.dumps({"op": "hello", "secret": stack.secrets["control"]}).encode() + b"\n")
        return json.loads(connection.makefile("rb").readline())


def created(response: requests.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201), response.text
    return response.json()


def live_recording(gateway: str, token: str, session_id: int) -> str:
    """The live lesson on the patrol list (the resources service heard recording.started) and its HLS playlist
    through nginx's /media/ once the recorder has written a segment (signed URL, the recordings volume)."""
    deadline = time.monotonic() + 25
    while True:
        items = [item for item in created(call("GET", f"{gateway}/v1/patrol/sessions", token))["items"]
                 if item["session_id"] == session_id]
        playlist = requests.get(urljoin(gateway, items[0]["live_url"]), timeout=5) if items else None
        if playlist is not None and playlist.status_code == 200 and "#EXTINF" in playlist.text:
            return playlist.text
        assert time.monotonic() < deadline, f"no live recording: {items} {playlist and playlist.status_code}"
        time.sleep(0.5)


def recorded_and_played(gateway: str, token: str, session_id: int) -> dict[str, Any]:
    """The ended lesson as a resource of the library (recording.available) and its MP4 and HLS through nginx."""
    deadline = time.monotonic() + 60
    while not (found := [item for item in created(call("GET", f"{gateway}/v1/resources", token))["items"]
                         if item["session_id"] == session_id]):
        assert time.monotonic() < deadline, "the recording never became a resource"
        time.sleep(1)
    resource = found[0]
    assert resource["duration_seconds"] > 1, resource
    urls = created(call("GET", f"{gateway}/v1/resources/{resource['id']}/playback", token))
    mp4 = requests.get(urljoin(gateway, urls["mp4_url"]), headers={"Range": "bytes=0-1023"}, timeout=10)
    assert mp4.status_code == 206 and mp4.headers["Content-Type"] == "video/mp4", (mp4.status_code, mp4.headers)
    assert mp4.content[4:8] == b"ftyp", mp4.content[:16]
    hls = requests.get(urljoin(gateway, urls["hls_url"]), timeout=10)
    assert hls.status_code == 200 and "#EXT-X-ENDLIST" in hls.text, hls.text
    # The patrol page that plays them, with hls.js (make web-deps put it in the nginx image).
    for path, kind in (("/patrol/", "text/html"), ("/patrol/vendor/hls.min.js", "javascript")):
        page = requests.get(urljoin(gateway, path), timeout=10)
        assert page.status_code == 200 and kind in page.headers["Content-Type"], (path, page.status_code, page.headers)
    return resource


def stream_to_a_branch(gateway: str, tokens: dict[str, Any], tmp_path: Path) -> tuple[list[int], int]:
    """A lesson from the master school QS-01 to QS-02 set up through the gateway, recorded: the decoded frame
    sizes at the branch and the lesson's id. The master sends until the recorder's live playlist has a segment."""
    token, schools = tokens["bureau_token"], tokens["schools"]
    room = {"bureau_id": tokens["bureau_id"]}
    # The school's link comes from accounts; the master publishes one camera track (one m= section to play).
    master = created(call("POST", f"{gateway}/v1/classrooms", token, {
        **room, "school_id": schools["QS-01"], "name": "录播教室", "kind": "broadcasting",
        "tracks": [{"track": "camera", "kind": "video", "layers_bps": [1_500_000]}]}))
    receive_port = free_udp_port_pair()
    branch = created(call("POST", f"{gateway}/v1/classrooms", token, {
        **room, "school_id": schools["QS-02"], "name": "接收教室", "kind": "receiving",
        "receive_host": "127.0.0.1", "receive_port": receive_port}))
    now = datetime.now(UTC)
    lesson = created(call("POST", f"{gateway}/v1/sessions", token, {
        "kind": "master_teacher", "title": "七年级数学", "master_classroom_id": master["id"],
        "starts_at": now.isoformat(), "ends_at": (now + timedelta(minutes=40)).isoformat(),
        "branch_classroom_ids": [branch["id"]]}))
    session = f"{gateway}/v1/sessions/{lesson['id']}"
    assert created(call("POST", f"{session}/start", token))["status"] == "live"

    deadline = time.monotonic() + 15
    while (sdp := call("GET", f"{session}/classrooms/{branch['id']}/sdp", token)).status_code == 503:
        assert time.monotonic() < deadline, "the data plane never confirmed the branch"
        time.sleep(0.2)
    assert sdp.status_code == 200 and f"m=video {receive_port} RTP/AVP 96" in sdp.text, sdp.text
    (tmp_path / "branch.sdp").write_text(sdp.text)
    receiver = subprocess.Popen(
        [FFMPEG, "-nostdin", "-v", "error", "-protocol_whitelist", "file,udp,rtp", "-i", str(tmp_path / "branch.sdp"),
         "-t", "3", "-f", "framecrc", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    join = created(call("POST", f"{session}/classrooms/{master['id']}/join-token", token, {}))
    media = (join["media_address"][0], int(join["media_address"][1]))
    source_port = free_udp_port_pair()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hello:
        hello.bind(("127.0.0.1", source_port))
        hello.sendto(join["hellos"]["camera"].encode("ascii"), media)  # pins the camera track's sender
    time.sleep(0.5)  # the hello is handled before the encoder binds the same port
    sender = subprocess.Popen(
        [FFMPEG, "-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25", "-t", "40",
         *_encoder_output(HIGH_SSRC, "1200k", media[1], source_port, "640x360")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        framecrc, errors = receiver.communicate(timeout=20)
        assert receiver.returncode == 0 and not errors.strip(), errors.decode(errors="replace")
        live_recording(gateway, token, lesson["id"])
    finally:
        for process in (receiver, sender):
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)
    created(call("POST", f"{session}/end", token))
    return _decoded_frame_sizes(framecrc.decode()), lesson["id"]


@pytest.mark.containers
def test_the_platform_runs_in_containers(stack: Stack, tmp_path: Path) -> None:
    started = time.monotonic()
    stack.start_infrastructure()
    stack.start_applications()  # at once: migrations and services wait for what they need themselves
    stack.start_nginx(tmp_path / "nginx")
    stack.start_prometheus(prometheus_config(stack, tmp_path / "prometheus"))
    wait_until(lambda: requests.get(f"{stack.gateway}/readyz", timeout=2).status_code == 200, READY_SECONDS,
               interval=0.5, what="the gateway's /readyz")
    ready_after = time.monotonic() - started
    # /readyz covers the broker and accounts; every other service serves its metrics once it runs.
    for target in stack.scrape_targets().values():
        wait_until(lambda target=target: "lianxiao_" in requests.get(f"http://{target}/metrics", timeout=2).text,
                   READY_SECONDS, interval=0.5, what=f"metrics at {target}")
    print(f"\ncontainers: started to /readyz in {ready_after:.1f} s, every process up in "
          f"{time.monotonic() - started:.1f} s")

    assert stack.exit_code("migrate", timeout=30) == 0, stack.logs("migrate")
    for service in ("accounts", "resources", "gateway", "relay-dataplane", "recorder"):
        assert stack.user(service) == "10001", service  # the image's unprivileged user
    for service in ("recorder", "resources"):  # the recordings volume: the recorder writes, retention deletes
        probe = f"{RECORDINGS_ROOT}/write-probe-{service}"
        podman("exec", stack.name(service), "sh", "-c", f"touch {probe} && rm {probe}")
    hello = recorder_hello(stack)
    assert hello["ok"] and hello["media_ports"] == list(stack.recorder_media_ports), hello
    assert hello["storage"]["root"] == RECORDINGS_ROOT and hello["storage"]["free_bytes"] > 0, hello
    for service in ("rabbitmq", "postgres", "nginx"):
        assert stack.user(service) != "0", service  # the Debian package's user (nginx: the image's)

    tokens = json.loads(stack.run_once(["python", "-m", "services.accounts.cli", "demo"]))
    teachers = requests.get(f"{stack.gateway}/v1/schools/{tokens['schools']['QS-02']}/teachers",
                            headers={"Authorization": f"Bearer {tokens['school_token_QS-02']}"}, timeout=15)
    assert teachers.status_code == 200, teachers.text
    assert {teacher["staff_number"] for teacher in teachers.json()["items"]} == {"T0201", "T0202"}
    # The resource library answers through the gateway (the resources service, its database): empty so far.
    library = call("GET", f"{stack.gateway}/v1/resources", tokens["bureau_token"])
    assert library.status_code == 200 and library.json()["items"] == [], library.text

    sizes, lesson_id = stream_to_a_branch(stack.gateway, tokens, tmp_path)
    assert len(sizes) >= 25 and set(sizes) == {FULL_FRAME_BYTES}, f"{len(sizes)} frames, sizes {set(sizes)}"
    ended = time.monotonic()
    resource = recorded_and_played(stack.gateway, tokens["bureau_token"], lesson_id)
    print(f"containers: the recording ({resource['duration_seconds']:.1f} s) a resource, played through nginx, "
          f"{time.monotonic() - ended:.1f} s after the lesson ended")
    metrics = requests.get(f"http://127.0.0.1:{stack.ports['dataplane_metrics']}/metrics", timeout=5).text
    assert "lianxiao_relay_" in metrics

    prometheus = f"http://127.0.0.1:{stack.ports['prometheus']}"
    deadline = time.monotonic() + 30
    while True:  # every process scraped, every rule of the repository evaluated without error
        health = targets_up(prometheus)
        rules = [rule["health"] for group in requests.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]
                 ["groups"] for rule in group["rules"]]
        if set(health.values()) == {"up"} and len(health) == len(stack.scrape_targets()) and set(rules) == {"ok"}:
            break
        assert time.monotonic() < deadline, f"Prometheus targets {health}, rule health {set(rules)}"
        time.sleep(1)

    for service in CONTAINERS:
        found = problems(stack.logs(service))
        assert not found, f"{service}: {found[:5]}"
        if service != "migrate":  # every long-running process is still up, never restarted
            assert stack.state(service) == "running", f"{service}: {stack.state(service)}"

    # Stopped as podman-compose down and Kubernetes do (SIGTERM): each within the grace period, none killed.
    stopped = {service: stack.stop(service, STOP_GRACE_SECONDS) for service in STOP_ORDER}
    print("containers: stop (s, exit code) " + ", ".join(f"{name} {seconds:.1f} {code}"
                                                          for name, (seconds, code) in stopped.items()))
    killed = {name: result for name, result in stopped.items()
              if result[0] >= STOP_GRACE_SECONDS or result[1] == 137}
    assert not killed, f"not stopped by SIGTERM within {STOP_GRACE_SECONDS} s: {killed}"
    print(f"containers: whole run {time.monotonic() - started:.1f} s")
