"""RTMP push with real peers: ffmpeg stands in for a recording classroom and publishes H.264 + AAC to the ingest's
nginx-rtmp; the stream goes, repackaged without re-encoding, through the relay's data plane to two receiving
classrooms that decode picture and sound. A wrong or expired stream key is refused and counted."""

from __future__ import annotations

import shutil

import pytest

from tests.relay.media_peers import run
from tests.relay.relay_harness import stop_process, wait_until

from .ingest_harness import (
    BRANCHES,
    MASTER,
    SESSION,
    branch_ports,
    decoded_frames,
    ingest_entry,
    lesson_on_dataplane,
    rtmp_publisher,
    start_decoder,
    write_branch_sdp,
)

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (make system-deps)")
PUBLISH_SECONDS = 20  # stopped as soon as both branches decoded 4 s; long enough for a slow start under load
DECODE_SECONDS = 4


def test_rtmp_push_reaches_two_branches_with_picture_and_sound(dataplane, ingest, tmp_path) -> None:
    assert FFMPEG is not None
    ports = branch_ports()
    outputs = lesson_on_dataplane(dataplane, ports)
    reply = ingest.call("set_state", ingests=[ingest_entry(dataplane, "rtmp")])
    (entry,) = reply["ingests"]
    assert entry["rtmp_url"] == f"rtmp://127.0.0.1:{ingest.rtmp_port}/live"
    assert entry["stream_key"].startswith(f"{SESSION}.{MASTER}.")

    decoders = {branch: start_decoder(FFMPEG, write_branch_sdp(tmp_path / f"{branch}.sdp", ports[branch],
                                                               outputs[branch]), DECODE_SECONDS)
                for branch in BRANCHES}
    publisher = rtmp_publisher(FFMPEG, f"{entry['rtmp_url']}/{entry['stream_key']}", PUBLISH_SECONDS)
    results = {}
    try:
        for branch, decoder in decoders.items():
            returncode, stdout, stderr = run(decoder, PUBLISH_SECONDS + 10)
            results[branch] = (returncode, decoded_frames(stdout), stderr)
        stats = ingest.stats()
        relay = dataplane.stats(SESSION)
        metrics = ingest.metrics()
    finally:
        for process in (publisher, *decoders.values()):
            stop_process(process)

    for branch, (returncode, frames, errors) in results.items():
        assert returncode == 0, f"{branch}: decoder exited {returncode}: {errors}"
        # 4 s of lesson: 25 pictures/s, and 48000/1024 ≈ 47 AAC frames/s of sound.
        assert frames[0] >= 75, f"{branch} decoded {frames[0]} pictures ({errors})"
        assert frames[1] >= 140, f"{branch} decoded {frames[1]} sound frames ({errors})"

    (live,) = stats["ingests"]
    assert live["publishing"] and live["running"]
    by_track = {track["track"]: track for track in live["tracks"]}
    assert by_track["camera"]["keyframe_interval_seconds"] == pytest.approx(1.0, abs=0.35)  # -g 25 at 25 fps
    assert 500_000 < by_track["camera"]["bits_per_second"] < 4_000_000
    relay_tracks = {track["track"]: track for track in relay["sessions"][SESSION]["tracks"]}
    assert relay_tracks["camera"]["live"] and relay_tracks["audio"]["live"]
    # The data plane admitted each track from the hop's own socket (hello), nothing refused.
    assert relay_tracks["camera"]["senders"] == [by_track["camera"]["source_address"]]
    assert f'lianxiao_ingest_connected{{classroom="{MASTER}",kind="rtmp",session="{SESSION}"}} 1.0' in metrics
    assert "lianxiao_ingest_keyframe_interval_seconds{" in metrics


def test_a_wrong_or_expired_stream_key_is_refused_and_counted(dataplane, ingest) -> None:
    assert FFMPEG is not None
    lesson_on_dataplane(dataplane, branch_ports())
    reply = ingest.call("set_state", ingests=[ingest_entry(dataplane, "rtmp")])
    (entry,) = reply["ingests"]
    key = entry["stream_key"]
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    other_session = key.replace(SESSION, "session-9", 1)
    for bad in (forged, other_session, "not-a-key"):
        publisher = rtmp_publisher(FFMPEG, f"{entry['rtmp_url']}/{bad}", 2)
        publisher.communicate(timeout=20)
        assert publisher.returncode != 0, f"publishing with {bad!r} was accepted"
    # An expired key: the ingest holds a token that expired a second ago (the control plane would not renew it
    # after the lesson).
    expired_entry = ingest_entry(dataplane, "rtmp", ttl=-1)
    expired_key = ingest.call("set_state", ingests=[expired_entry])["ingests"][0]["stream_key"]
    publisher = rtmp_publisher(FFMPEG, f"{entry['rtmp_url']}/{expired_key}", 2)
    publisher.communicate(timeout=20)
    assert publisher.returncode != 0

    refused = ingest.stats()["refused_publishes"]
    assert refused == {"wrong_key": 1, "not_live": 1, "malformed": 1, "expired": 1}
    (live,) = ingest.stats()["ingests"]
    assert not live["publishing"] and not live["running"] and live["tracks"][0]["bytes_in"] == 0
    wait_until(lambda: 'lianxiao_ingest_publish_refused_total{reason="wrong_key"} 1.0' in ingest.metrics(), 5)
    assert dataplane.stats(SESSION)["sessions"][SESSION]["tracks"][0]["bytes_in"] == 0
