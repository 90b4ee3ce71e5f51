"""The patrol page in a real headless Chromium (Debian's) against real nginx and a live ffmpeg stream.

ffmpeg writes a live HLS fMP4 recording (H.264 + Opus, EVENT playlist) into a recordings root the way the
recorder does; nginx serves it under a signed URL and the page plays it through hls.js from its shared-link
form (`/patrol/#play=<signed URL>`, the page's own player): the video plays (its clock advances, it has
data), a screenshot shows a picture, the Opus audio is decoded. Then a knowledge-point clip of an MP4 plays.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tests.relay.relay_harness import stop_process
from tests.web.browser_support import advance_over, chromium, picture_variance, video_state, wait_until_playing
from tests.web.web_support import Nginx, make_mp4, nginx

pytestmark = pytest.mark.skipif(not Path("/usr/bin/ffmpeg").exists(), reason="ffmpeg: make system-deps")

# testsrc2 has colour bars, a moving gradient and text; a black or one-colour frame has a variance near 0.
MIN_PICTURE_VARIANCE = 300.0
VIDEO = "#single-video"


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="lxt-live-"))  # readable by nginx's `nobody` workers
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def live(root: Path) -> Iterator[Path]:
    """A live lesson: ffmpeg at real time, HLS with fMP4 segments of one second, for at most 120 s."""
    folder = root / "rec-1"
    folder.mkdir()
    folder.chmod(0o755)
    ffmpeg = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", "120", "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "25",
         "-pix_fmt", "yuv420p", "-c:a", "libopus", "-b:a", "64k",
         "-f", "hls", "-hls_segment_type", "fmp4", "-hls_time", "1", "-hls_playlist_type", "event",
         "-hls_fmp4_init_filename", "init.mp4", "-hls_segment_filename", str(folder / "seg-%05d.m4s"),
         str(folder / "index.m3u8")],
        stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        playlist = folder / "index.m3u8"
        while time.monotonic() < deadline:
            assert ffmpeg.poll() is None, ffmpeg.stderr.read() if ffmpeg.stderr else ""
            if playlist.exists() and playlist.read_text().count("#EXTINF") >= 4:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("ffmpeg wrote no 4 segments within 30 s")
        yield folder
    finally:
        stop_process(ffmpeg, grace=10)


@pytest.fixture(scope="module")
def server(root: Path, live: Path) -> Iterator[Nginx]:
    make_mp4(root / "rec-2" / "program.mp4", seconds=12, audio="libopus")
    for path in (root / "rec-2", root / "rec-2" / "program.mp4"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    with nginx(root) as running:
        yield running


def shared_link(server: Nginx, signed_url: str) -> str:
    return f"{server.url}/patrol/#play={quote(signed_url, safe='')}"


def test_the_page_plays_a_live_hls_fmp4_stream_with_picture_and_sound(server: Nginx, tmp_path: Path) -> None:
    live_url = server.signed("rec-1", "index.m3u8")
    playlist = requests.get(live_url, timeout=10)
    assert playlist.status_code == 200 and "#EXT-X-ENDLIST" not in playlist.text  # live, still growing
    with chromium() as browser:
        browser.goto(shared_link(server, live_url))
        state = wait_until_playing(browser, VIDEO, seconds=40)
        assert (state["width"], state["height"]) == (640, 360)
        assert state["src"].startswith("blob:")  # through Media Source Extensions (hls.js), not a native player
        moved = advance_over(browser, VIDEO, 3.0)
        assert moved >= 2.0, f"currentTime moved {moved:.2f} s in 3 s of wall time"
        state = video_state(browser, VIDEO)
        assert state["readyState"] >= 3
        assert state["audioBytes"] > 0, "the Opus track was not decoded"
        shot = browser.screenshot(VIDEO, tmp_path / "live.png")
        variance = picture_variance(shot)
        assert variance > MIN_PICTURE_VARIANCE, f"the screenshot looks blank (variance {variance:.0f}): {shot}"
        assert browser.evaluate("document.getElementById('single-error').textContent") == ""
        assert browser.errors() == []


def test_the_page_plays_a_knowledge_point_clip_and_refuses_a_bad_link(server: Nginx, tmp_path: Path) -> None:
    clip_url = server.signed("rec-2", "program.mp4", start=3, end=7)
    with chromium() as browser:
        browser.goto(shared_link(server, clip_url))
        state = wait_until_playing(browser, VIDEO, seconds=20)
        # nginx cut the 12 s recording to the clip: 4 s, from the keyframe at or before 3 s.
        assert 3.5 <= state["duration"] <= 5.5, state
        assert advance_over(browser, VIDEO, 1.5) >= 1.0
        assert picture_variance(browser.screenshot(VIDEO, tmp_path / "clip.png")) > MIN_PICTURE_VARIANCE
        # An expired link says so instead of showing a black box.
        browser.goto(shared_link(server, server.signed("rec-2", "program.mp4", lifetime=-10)))
        browser.wait_for("document.getElementById('single-error').textContent.includes('expired')", 10)
        # A link that is not a /media/ URL is not played at all.
        browser.goto(f"{server.url}/patrol/#play={quote('https://example.invalid/x.mp4', safe='')}")
        browser.wait_for("document.getElementById('single-error').textContent.includes('Not a playback link')", 10)
        assert browser.evaluate("v => [v.getAttribute('src'), v.networkState]", VIDEO) == [None, 0]  # EMPTY
