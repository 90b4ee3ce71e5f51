"""nginx's /media/ (deploy/nginx/media.conf) against URLs signed by services/common/playback_urls.py.

A signed URL opens its own recording's files (HTTP Range, HLS types, no-cache playlists) and its own clip,
until it expires; nothing else: not another recording, not an altered clip, not a path outside the key's
folder, not a symlink, not a hidden file. Real nginx, files made by ffmpeg.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.web.web_support import Nginx, make_mp4, nginx, probe_codecs, probe_duration

pytestmark = pytest.mark.skipif(not Path("/usr/bin/ffmpeg").exists(), reason="ffmpeg: make system-deps")


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parent is private, and nginx's workers run as `nobody` under root.
    root = Path(tempfile.mkdtemp(prefix="lxt-recordings-"))
    root.chmod(0o755)
    make_mp4(root / "rec-1" / "program.mp4", seconds=10, audio="libopus")
    make_mp4(root / "rec-2" / "program.mp4", seconds=10, audio="aac")
    (root / "rec-1" / "index.m3u8").write_text("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-PLAYLIST-TYPE:EVENT\n")
    (root / "rec-1" / "part-000").mkdir()
    (root / "rec-1" / "part-000" / "seg-00001.m4s").write_bytes(os.urandom(4096))
    (root / "rec-1" / "manifest.json").write_text('{"key": "rec-1"}')
    (root / "rec-1" / ".hidden.mp4").write_bytes(b"not for anyone")
    (root / "rec-1" / "leak.mp4").symlink_to("/etc/hostname")
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[Nginx]:
    with nginx(root) as running:
        yield running


def raw_get(server: Nginx, path: str) -> int:
    """A GET of a path exactly as written (requests would resolve `..` before sending it)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_signed_url_serves_its_file_with_the_right_type(server: Nginx, root: Path) -> None:
    answer = requests.get(server.signed("rec-1", "program.mp4"), timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "video/mp4"
    assert answer.content == (root / "rec-1" / "program.mp4").read_bytes()
    playlist = requests.get(server.signed("rec-1", "index.m3u8"), timeout=10)
    assert playlist.status_code == 200
    assert playlist.headers["Content-Type"] == "application/vnd.apple.mpegurl"
    assert playlist.headers["Cache-Control"] == "no-cache"  # it grows while the lesson is live
    segment = requests.get(server.signed("rec-1", "part-000/seg-00001.m4s"), timeout=10)
    assert segment.status_code == 200
    assert segment.headers["Content-Type"] == "video/iso.segment"
    assert "max-age" in segment.headers["Cache-Control"]


def test_http_range_answers_206_with_exactly_those_bytes(server: Nginx, root: Path) -> None:
    data = (root / "rec-1" / "program.mp4").read_bytes()
    answer = requests.get(server.signed("rec-1", "program.mp4"), headers={"Range": "bytes=1000-1999"}, timeout=10)
    assert answer.status_code == 206
    assert answer.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert answer.content == data[1000:2000]
    tail = requests.get(server.signed("rec-1", "program.mp4"), headers={"Range": "bytes=-500"}, timeout=10)
    assert tail.status_code == 206 and tail.content == data[-500:]


def test_an_expired_url_is_gone_with_a_problem_document(server: Nginx) -> None:
    answer = requests.get(server.signed("rec-1", "program.mp4", lifetime=-5), timeout=10)
    assert answer.status_code == 410
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert "expired" in answer.json()["detail"]


def test_a_signature_opens_only_its_own_recording(server: Nginx) -> None:
    url = server.signed("rec-1", "program.mp4")
    assert requests.get(url, timeout=10).status_code == 200
    other = requests.get(url.replace("/rec-1/", "/rec-2/"), timeout=10)
    assert other.status_code == 403
    assert other.headers["Content-Type"] == "application/problem+json"
    assert requests.get(server.signed("rec-1", "program.mp4", secret="another-secret"), timeout=10).status_code == 403
    # The expiry is signed too: a later one with the same signature is refused.
    parts = urlsplit(url).path.split("/")
    parts[3] = str(int(parts[3]) + 3600)
    assert requests.get(server.url + "/".join(parts), timeout=10).status_code == 403


def test_a_clip_url_is_cut_by_nginx_and_cannot_be_altered(server: Nginx, tmp_path: Path) -> None:
    for key, audio in (("rec-1", "opus"), ("rec-2", "aac")):
        url = server.signed(key, "program.mp4", start=2, end=6.5)
        answer = requests.get(url, timeout=10)
        assert answer.status_code == 200, answer.text
        clip = tmp_path / f"{key}-clip.mp4"
        clip.write_bytes(answer.content)
        assert probe_codecs(clip) == ["h264", audio]
        # nginx cuts at the keyframe at or before `start` (one per second here): 4.5 s, give or take one.
        assert 4.0 <= probe_duration(clip) <= 5.6, probe_duration(clip)
        assert requests.get(url.replace("end=6.5", "end=9"), timeout=10).status_code == 403
        assert requests.get(url.replace("start=2", "start=0"), timeout=10).status_code == 403
        assert requests.get(url.split("?")[0], timeout=10).status_code == 403  # the whole file needs its own URL
    # And a whole-file URL cannot be turned into a clip.
    whole = server.signed("rec-1", "program.mp4")
    assert requests.get(whole + "?start=1&end=2", timeout=10).status_code == 403


def test_nothing_outside_the_key_folder_is_served(server: Nginx) -> None:
    url = urlsplit(server.signed("rec-1", "program.mp4")).path
    prefix = url.rsplit("/", 2)[0]  # /media/<signature>/<expires>
    for path in (
        f"{prefix}/rec-1/../rec-2/program.mp4",          # resolved by nginx to rec-2: not this signature
        f"{prefix}/rec-1/%2e%2e/rec-2/program.mp4",
        f"{prefix}/rec-1/..%2f..%2f..%2fetc/passwd",
        f"{prefix}/rec-1/../../../etc/passwd",            # /media/etc/passwd
        f"{prefix}/rec-1/manifest.json",                 # not a media file
        "/media/../../etc/passwd",                       # above the root: nginx says 400
    ):
        status = raw_get(server, path)
        assert 400 <= status < 500, (path, status)
    # Four levels up leave /media/ for the gateway's routes: whatever answers there, not a file from disk.
    assert raw_get(server, f"{prefix}/rec-1/../../../../etc/passwd") != 200
    # Hidden files cannot be named, even when signed.
    hidden = server.signed("rec-1", "hidden.mp4").replace("hidden.mp4", ".hidden.mp4")
    assert requests.get(hidden, timeout=10).status_code == 403
    # A symlink inside the folder, even with a valid signature, is not followed.
    assert requests.get(server.signed("rec-1", "leak.mp4"), timeout=10).status_code == 403
    missing = requests.get(server.signed("rec-1", "missing.mp4"), timeout=10)
    assert missing.status_code == 404 and missing.headers["Content-Type"] == "application/problem+json"


def test_without_a_playback_secret_no_url_opens(root: Path) -> None:
    with nginx(None) as bare:
        assert requests.get(bare.signed("rec-1", "program.mp4"), timeout=10).status_code == 403
        assert requests.get(bare.signed("rec-1", "program.mp4", secret=""), timeout=10).status_code == 403


def test_signed_urls_keep_working_until_their_second_of_expiry(server: Nginx) -> None:
    url = server.signed("rec-1", "index.m3u8", lifetime=2)
    assert requests.get(url, timeout=10).status_code == 200
    time.sleep(3.2)
    assert requests.get(url, timeout=10).status_code == 410


def test_the_patrol_page_is_served_with_its_types_and_a_strict_policy(server: Nginx) -> None:
    page = requests.get(f"{server.url}/patrol/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "巡课" in page.text
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["Referrer-Policy"] == "no-referrer"  # signed URLs never leak in a Referer
    for path, kind in (("patrol.js", "application/javascript"), ("patrol.css", "text/css"),
                       ("vendor/hls.min.js", "application/javascript")):
        asset = requests.get(f"{server.url}/patrol/{path}", timeout=10)
        assert asset.status_code == 200, (path, "make web-deps installs hls.js")
        assert asset.headers["Content-Type"].startswith(kind), path
    moved = requests.get(f"{server.url}/patrol", allow_redirects=False, timeout=10)
    assert moved.status_code == 301 and moved.headers["Location"].endswith("/patrol/")
    # Only web/patrol/ is served: not npm's folder beside it, not the repository above it.
    assert requests.get(f"{server.url}/patrol/node_modules/hls.js/package.json", timeout=10).status_code == 404
    assert raw_get(server, "/patrol/../../deploy/run_local.py") == 400
