"""The disk guard with a real filesystem filling up, and the control channel's answers to malformed input."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path

import pytest

from .recorder_harness import (
    FFMPEG,
    SECRET,
    RecorderProcess,
    decode_errors,
    ffprobe,
    recording_entry,
    start_recorder,
    start_sender,
    wait_until,
)

pytestmark = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (make system-deps)")
GIB = 1024**3


def _free(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _metric(recorder: RecorderProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{recorder.metrics_port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_a_full_disk_refuses_new_recordings_and_ends_running_ones_playable(tmp_path: Path, media_base: int) -> None:
    root = tmp_path / "recordings"
    root.mkdir()
    free = _free(root)
    if free < 4 * GIB:
        pytest.skip("needs 4 GiB free to fill the disk past the guard and back")
    # The guard sits 1 GiB below today's free space; 2 GiB of real, allocated blocks take the disk past it.
    recorder = start_recorder(root, media_base, "--min-free-bytes", str(free - GIB),
                              "--low-free-bytes", str(free - GIB // 2))
    sender = start_sender(media_base, 14)
    filler = tmp_path / "filler"
    try:
        assert recorder.call("set_state", recordings=[recording_entry("rec-5", media_base)])["refused"] == []
        assert recorder.call("hello", secret=SECRET)["guard"] == "ok"
        wait_until(lambda: (root / "rec-5" / "index.m3u8").exists()
                   and (root / "rec-5" / "index.m3u8").read_text().count(".m4s") >= 2, 15, "two segments")
        with open(filler, "wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, 2 * GIB)
        done = recorder.wait_state("rec-5", ("stopped_disk_full",), timeout=25)
        # The control plane still wants rec-5 and now a new rec-6: both refused, nothing started.
        refused = recorder.call("set_state", recordings=[recording_entry("rec-5", media_base)])["refused"]
        assert [(entry["key"], entry["error"]) for entry in refused] == [("rec-5", "disk_full")]
        refused = recorder.call("set_state", recordings=[recording_entry("rec-6", media_base)])["refused"]
        assert [(entry["key"], entry["error"]) for entry in refused] == [("rec-6", "disk_full")]
        hello = recorder.call("hello", secret=SECRET)
        assert hello["guard"] == "full" and hello["storage"]["free_bytes"] < free - GIB
        assert _metric(recorder, "lianxiao_recorder_disk_guard") == 2
        assert _metric(recorder, "lianxiao_recorder_disk_free_bytes") < free - GIB
    finally:
        filler.unlink(missing_ok=True)
        sender.kill()
        sender.wait()
        errors = recorder.stop()
        assert "Traceback" not in errors, errors
    folder = root / "rec-5"
    assert "#EXT-X-ENDLIST" in (folder / "index.m3u8").read_text()
    assert decode_errors(folder / "index.m3u8") == ""
    assert done["files"]["program_mp4"] == "program.mp4" and decode_errors(folder / "program.mp4") == ""
    assert float(ffprobe(folder / "program.mp4")["format"]["duration"]) > 2
    assert not (root / "rec-6").exists()


def test_a_recorder_started_on_a_full_disk_refuses_with_disk_full(tmp_path: Path, media_base: int) -> None:
    root = tmp_path / "recordings"
    recorder = start_recorder(root, media_base, "--min-free-bytes", str(1 << 62), "--low-free-bytes", str(1 << 63))
    try:
        hello = recorder.call("hello", secret=SECRET)
        assert hello["guard"] == "full" and hello["media_ports"] == [media_base, media_base + 8]
        [refused] = recorder.call("set_state", recordings=[recording_entry("rec-7", media_base)])["refused"]
        assert refused["key"] == "rec-7" and refused["error"] == "disk_full" and "RECORDER_MIN_FREE_BYTES" in refused[
            "message"]
        assert recorder.call("get_stats")["recordings"] == []
        assert _metric(recorder, 'lianxiao_recorder_refused_total{reason="disk_full"}') == 1
    finally:
        errors = recorder.stop()
        assert "Traceback" not in errors, errors


def _raw(port: int, *lines: bytes) -> list[dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        reader = connection.makefile("rb")
        replies = []
        for line in lines:
            connection.sendall(line)
            answer = reader.readline()
            if not answer:
                break
            replies.append(json.loads(answer))
        return replies


def test_malformed_control_requests_are_answered_with_errors(recorder: RecorderProcess, media_base: int) -> None:
    good = recording_entry("rec-8", media_base)
    assert recorder.call("set_state", recordings=[good])["refused"] == []
    port = recorder.control.port
    assert port is not None
    [unauthorized] = _raw(port, b'{"op": "get_stats"}\n')
    assert unauthorized["error"] == "unauthorized"
    [wrong] = _raw(port, b'{"op": "hello", "secret": "not-it"}\n')
    assert wrong["error"] == "unauthorized"
    hello = json.dumps({"op": "hello", "secret": SECRET}).encode() + b"\n"
    replies = _raw(port, hello, b"not json\n", b"[1, 2]\n", b'{"op": "explode"}\n', b"\xff\xfe\n")
    assert replies[0]["ok"] and [reply["error"] for reply in replies[1:]] == [
        "bad_request", "bad_request", "unknown_op", "bad_request"]

    sdp = good["sdp"]
    camera = good["tracks"][0]
    bad_entries = {
        "not a list": "everything",
        "key with a path": [{**good, "key": "../etc"}],
        "upper-case key": [{**good, "key": "REC-1"}],
        "keep not a boolean": [{**good, "keep": "yes"}],
        "odd port": [{**good, "tracks": [{**camera, "port": media_base + 1}]}],
        "port outside the range": [{**good, "tracks": [{**camera, "port": 2000}]}],
        "unsupported codec": [{**good, "tracks": [{**camera, "codec": "vp8"}]}],
        "no tracks": [{**good, "tracks": []}],
        "sdp not sdp": [{**good, "sdp": "hello"}],
        "sdp without the port": [{**good, "sdp": sdp.replace(f"m=video {media_base} ", "m=video 50000 ")}],
        "sdp not ascii": [{**good, "sdp": sdp + "s=课\r\n"}],
        "a huge sdp": [{**good, "sdp": "v=0\r\n" + "a=x\r\n" * 5000}],
        "same key twice": [good, good],
        "same port twice": [good, {**good, "key": "rec-9"}],
        "track not an object": [{**good, "tracks": ["camera"]}],
        "session with spaces": [{**good, "session": "a b"}],
    }
    for name, recordings in bad_entries.items():
        reply = recorder.call("set_state", recordings=recordings)
        assert reply["ok"] is False and reply["error"] == "bad_request" and reply["message"], (name, reply)
    for keys in ("rec-8", [1], ["../x"]):
        assert recorder.call("forget", keys=keys)["error"] == "bad_request"
    # Nothing of the bad requests was applied: the good recording runs on, the recorder answers as before.
    [entry] = recorder.call("get_stats")["recordings"]
    assert entry["key"] == "rec-8" and entry["state"] == "recording"
    assert recorder.process.poll() is None
    oversized = b'{"op": "get_stats", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}\n'
    replies = _raw(port, hello, oversized)
    assert replies[-1]["error"] == "bad_request"
    assert recorder.call("get_stats")["ok"]
