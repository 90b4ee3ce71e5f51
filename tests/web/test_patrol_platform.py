"""Issue 16's "Done means", as a new user meets it after the README: `make run`'s whole platform
(deploy/run_local.py: every service, the gateway behind nginx, the relay's data plane, the recorder), a lesson
with ffmpeg as the master classroom, an inspector with the demo bureau's token on the patrol page in headless
Chromium who sees it live and playing in the grid (and is counted as watching); the lesson ends, the page drops
its tile, the recording appears in the resource list, a knowledge-point clip is added and plays from its
signed URL, and the same URL with another end is refused. Real peers only, everything on 127.0.0.1, bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.activities.broker import wait_for
from tests.platform.local_stack import REPO, free_port_block, stack_env, start_platform, wait_until_ready
from tests.relay.relay_harness import stop_process
from tests.web.browser_support import advance_over, chromium, picture_variance, video_state, wait_until_playing
from tests.web.web_support import probe_duration

# The recorder, the relay's side of recording (which attaches it to live sessions) and the resource library.
PARTS = [REPO / "services" / "resources", REPO / "services" / "classroom_relay" / "recorder" / "__main__.py",
         REPO / "services" / "classroom_relay" / "recorder_link.py"]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(420),
    pytest.mark.skipif(not all(part.exists() for part in PARTS),
                       reason="the recorder, the relay's recordings and the resources service"),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg: make system-deps"),
]
MIN_PICTURE_VARIANCE = 300.0
SEND_SECONDS = 150  # an upper bound: the encoder is stopped when the lesson ends


def even_ports(count: int) -> int:
    """The first of `count` free consecutive ports, even (RTP on even ports, RTCP on the odd one above)."""
    first = free_port_block(count + 1)
    return first + first % 2


eventually = partial(wait_for, interval=0.5)  # (fetch, seconds, what): the services update at their own pace


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.http = base, requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def __call__(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        answer = self.http.request(method, f"{self.base}/v1{path}", json=body, timeout=15)
        assert answer.status_code == status, f"{method} {path}: {answer.status_code} {answer.text[:500]}"
        return answer.json() if answer.content else None


def master_encoder(media_port: int, camera_port: int, audio_port: int) -> subprocess.Popen:
    """The master classroom's encoder: H.264 camera and Opus voice as RTP, each from its registered port."""
    rtp = f"rtp://127.0.0.1:{media_port}"
    return subprocess.Popen(
        ["ffmpeg", "-nostdin", "-v", "error", "-re",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", str(SEND_SECONDS),
         "-map", "0:v", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25", "-bf", "0",
         "-pix_fmt", "yuv420p", "-b:v", "800k", "-payload_type", "96", "-f", "rtp",
         f"{rtp}?localport={camera_port}&pkt_size=1200",
         "-map", "1:a", "-c:a", "libopus", "-b:a", "64k", "-ac", "2", "-payload_type", "97", "-f", "rtp",
         f"{rtp}?localport={audio_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def test_an_inspector_patrols_a_live_lesson_then_plays_a_clip_of_its_recording(
    rabbit_config: dict[str, Any], tmp_path: Path
) -> None:
    base = free_port_block(40)
    recorder_ports = (base + 16) // 2 * 2 + 2  # even, as the control plane hands out blocks of 8
    recordings = Path(tempfile.mkdtemp(prefix="lxt-e2e-recordings-"))  # nginx's `nobody` workers read it
    recordings.chmod(0o755)
    env = stack_env(
        base, rabbit_config["AMQP_URI"], tmp_path, recordings,
        RECORDER_MEDIA_PORTS=f"{recorder_ports}-{recorder_ports + 15}",
        RECORDER_MIN_FREE_BYTES=str(256 * 1024**2),
        RECORDER_LOW_FREE_BYTES=str(512 * 1024**2),
        PLAYBACK_SECRET="e2e-playback-secret-5b0c",
        WATCH_HEARTBEAT_SECONDS="5",
        # Short-lived URLs, so the page must renew the live tile's URL while it plays (within 2 refreshes).
        PLAYBACK_URL_LIFETIME="45",
    )  # fmt: skip
    gateway = env["GATEWAY_BIND"]
    platform = start_platform(env)
    encoder: subprocess.Popen | None = None
    try:
        wait_until_ready(f"http://{gateway}/readyz", platform, seconds=90)
        demo = subprocess.run([sys.executable, "-m", "services.accounts.cli", "demo"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60, check=True)
        tokens = json.loads(demo.stdout)
        api = Api(f"http://{gateway}", tokens["bureau_token"])
        schools = tokens["schools"]

        # A 专递课堂 from the master school to a branch: recorded by default.
        media = even_ports(4)
        master = api("POST", "/classrooms", {
            "school_id": schools["QS-01"], "name": "录播教室", "kind": "broadcasting",
            "tracks": [{"track": "audio", "kind": "audio", "codec": "opus"},
                       {"track": "camera", "kind": "video", "layers_bps": [1_000_000]}]}, status=201)
        branch = api("POST", "/classrooms", {
            "school_id": schools["QS-02"], "name": "接收教室", "kind": "receiving",
            "receive_host": "127.0.0.1", "receive_port": even_ports(4)}, status=201)
        now = datetime.now(UTC)
        lesson = api("POST", "/sessions", {
            "kind": "dedicated_delivery", "title": "四年级科学（巡课测试）", "master_classroom_id": master["id"],
            "branch_classroom_ids": [branch["id"]], "branch_bps": 5_000_000, "subject": "科学", "grade": "四年级",
            "starts_at": now.isoformat(), "ends_at": (now + timedelta(minutes=40)).isoformat()}, status=201)
        session_id = lesson["id"]
        api("POST", f"/sessions/{session_id}/start")
        for track, port in (("camera", media), ("audio", media + 2)):
            api("PUT", f"/sessions/{session_id}/classrooms/{master['id']}/sender",
                {"track": track, "host": "127.0.0.1", "port": port})
        time.sleep(0.5)  # the registrations reach the data plane before the first packet
        encoder = master_encoder(int(env["RELAY_MEDIA_PORT"]), media, media + 2)

        live = eventually(lambda: [item for item in api("GET", "/patrol/sessions")["items"]
                                   if item["session_id"] == session_id], 60, "the lesson in /v1/patrol/sessions")
        assert "/media/" in live[0]["live_url"] and live[0]["live_url"].endswith("/index.m3u8")

        with chromium() as browser:
            # The inspector opens the page and pastes the bureau token.
            browser.goto(f"http://{gateway}/patrol/")
            browser.fill("#token", tokens["bureau_token"])
            browser.click("#token-form button[type=submit]")
            tile = f'.tile[data-session-id="{session_id}"] video'
            browser.wait_for(f"document.querySelector('{tile}') !== null", 30)
            state = wait_until_playing(browser, tile, seconds=90)
            assert state["src"].startswith("blob:") and (state["width"], state["height"]) == (640, 360)
            moved = advance_over(browser, tile, 3.0)
            assert moved >= 2.0, f"the live tile's clock moved {moved:.2f} s in 3 s"
            assert video_state(browser, tile)["readyState"] >= 3
            shot = browser.screenshot(tile, tmp_path / "patrol-grid.png")
            assert picture_variance(shot) > MIN_PICTURE_VARIANCE, f"the grid's picture looks blank: {shot}"
            browser.screenshot("body", tmp_path / "patrol-page.png")  # kept for a person to look at

            # The patrol is counted: a supervision watch of this session, with watched seconds.
            watch = eventually(lambda: [item for item in api("GET", "/watches")["items"]
                                        if item["target_kind"] == "live_session" and item["target_id"] == session_id
                                        and item["seconds_watched"] > 0], 30, "the patrol's watch with seconds")
            assert watch[0]["counted_as"] == "supervision"

            # The live URL expires in 45 s: the page plays a fresh one before (a new MediaSource), without a gap
            # the inspector would have to fix.
            first_source = video_state(browser, tile)["src"]
            browser.wait_for(f"document.querySelector('{tile}').currentSrc !== {json.dumps(first_source)}", 40)
            wait_until_playing(browser, tile, seconds=30)
            assert advance_over(browser, tile, 2.0) >= 1.0

            # The lesson ends: its tile goes at the next refresh, its recording becomes a resource.
            api("POST", f"/sessions/{session_id}/end")
            stop_process(encoder, grace=10)
            browser.click("#refresh")
            browser.wait_for(f"document.querySelector('{tile}') === null", 20)
            resource = eventually(lambda: [item for item in api("GET", "/resources")["items"]
                                           if item["session_id"] == session_id], 120, "the recording as a resource")[0]
            assert resource["duration_seconds"] > 5, resource
            clip = api("POST", f"/resources/{resource['id']}/clips",
                       {"title": "浮力的方向", "start_seconds": 2, "end_seconds": 5}, status=201)
            links = api("GET", f"/resources/{resource['id']}/playback")
            (signed,) = [item["url"] for item in links["clips"] if item["id"] == clip["id"]]

            # In the page: search, open the recording, click the clip.
            browser.click("#search button[type=submit]")
            row = f'#resources tr[data-resource-id="{resource["id"]}"] button'
            browser.wait_for(f"document.querySelector('{row}') !== null", 20)
            browser.click(row)
            wait_until_playing(browser, "#playback-video", seconds=30)
            browser.click(f'#clips button[data-clip-id="{clip["id"]}"]')
            browser.wait_for("document.getElementById('playback-video').currentSrc.includes('start=2')", 10)
            played = wait_until_playing(browser, "#playback-video", seconds=30)
            assert 2.0 <= played["duration"] <= 5.0, played  # 3 s, from the keyframe at or before 2 s
            browser.screenshot("body", tmp_path / "patrol-recording.png")  # kept for a person to look at
            clip_shot = browser.screenshot("#playback-video", tmp_path / "clip.png")
            assert picture_variance(clip_shot) > MIN_PICTURE_VARIANCE
            assert browser.errors() == []

        # The clip's signed URL, fetched as any player would; the same URL with another end is refused.
        url = f"http://{gateway}{signed}" if signed.startswith("/") else signed
        answer = requests.get(url, timeout=30)
        assert answer.status_code == 200 and answer.headers["Content-Type"] == "video/mp4"
        (tmp_path / "clip.mp4").write_bytes(answer.content)
        assert 2.0 <= probe_duration(tmp_path / "clip.mp4") <= 5.0
        assert requests.get(url.replace("end=5", "end=50"), timeout=10).status_code == 403
    finally:
        if encoder is not None:
            stop_process(encoder, grace=10)
        platform.send_signal(signal.SIGINT)
        try:
            output, _ = platform.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(platform.pid, signal.SIGKILL)
            output, _ = platform.communicate()
        shutil.rmtree(recordings, ignore_errors=True)
    assert platform.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-5000:]
