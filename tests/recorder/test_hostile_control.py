"""The recorder attacked through its control channel and its storage folder (issue 16's independent checks).

A real recorder process with real ffmpeg: SDPs that would send ffmpeg's RTCP elsewhere, join a multicast
group, resolve a host name or hide a line from the checks; absurd ports; a thousand recordings at once; and
links planted inside a recording's folder that would have the recorder write, read or delete outside its root.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

import pytest

from services.classroom_relay import sidecar
from services.classroom_relay.recorder import manifest as manifest_file
from services.classroom_relay.recorder.control import BadRequest, parse_recording
from services.classroom_relay.recorder.finalize import remux
from services.classroom_relay.recorder.playlist import ComposedPart, Segment, write_atomically
from services.common.storage import remove_tree

from .recorder_harness import FFMPEG, SECRET, RecorderProcess, recording_entry, start_sender, wait_until

PORTS = (42000, 42999)


def _with_sdp(entry: dict, old: str, new: str) -> dict:
    assert old in entry["sdp"], entry["sdp"]
    return {**entry, "sdp": entry["sdp"].replace(old, new)}


def hostile_entries(base: int) -> dict[str, dict]:
    good = recording_entry("rec-30", base)
    return {
        "c= a host name": _with_sdp(good, "c=IN IP4 127.0.0.1", "c=IN IP4 attacker.example"),
        "c= multicast": _with_sdp(good, "c=IN IP4 127.0.0.1", "c=IN IP4 239.1.2.3/16"),
        "c= multicast no ttl": _with_sdp(good, "c=IN IP4 127.0.0.1", "c=IN IP4 224.0.0.1"),
        "c= family mismatch": _with_sdp(good, "c=IN IP4 127.0.0.1", "c=IN IP6 127.0.0.1"),
        "c= in a media section": _with_sdp(good, "a=recvonly", "a=recvonly\r\nc=IN IP4 evil.example"),
        "c= hidden behind a lone CR": _with_sdp(good, "a=recvonly", "a=recvonly\rc=IN IP4 evil.example"),
        "a=rtcp to a host name": _with_sdp(good, "a=rtcp:9 IN IP4 127.0.0.1", "a=rtcp:9 IN IP4 evil.example"),
        "a=rtcp port 0": _with_sdp(good, "a=rtcp:9 ", "a=rtcp:0 "),
        "a=rtcp port 70000": _with_sdp(good, "a=rtcp:9 ", "a=rtcp:70000 "),
        "a=rtcp empty": _with_sdp(good, "a=rtcp:9 IN IP4 127.0.0.1", "a=rtcp:"),
        "m= a 5000-digit port": _with_sdp(good, f"m=audio {base + 2} ", "m=audio " + "9" * 5000 + " "),
        "m= port 70000": _with_sdp(good, f"m=audio {base + 2} ", "m=audio 70000 "),
    }


def test_sdps_that_point_ffmpeg_elsewhere_are_refused_before_anything_runs() -> None:
    for name, entry in hostile_entries(PORTS[0]).items():
        with pytest.raises(BadRequest) as refused:
            parse_recording(entry, PORTS)
        assert "sdp" in str(refused.value), (name, refused.value)
    # The relay's own SDP (sdp.py) still passes: its c= and a=rtcp: name the relay's unicast address.
    assert set(parse_recording(recording_entry("rec-30", PORTS[0]), PORTS).streams) == {"program"}


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (make system-deps)")
def test_the_recorder_answers_attacks_on_its_channel_and_runs_on(recorder: RecorderProcess, root: Path,
                                                                 media_base: int) -> None:
    for name, entry in hostile_entries(media_base).items():
        reply = recorder.call("set_state", recordings=[entry])
        assert reply["ok"] is False and reply["error"] == "bad_request" and "sdp" in reply["message"], (name, reply)
    entries = [recording_entry(f"rec-{index}", media_base) for index in range(1000)]
    reply = recorder.call("set_state", recordings=entries)
    assert reply["ok"] is False and reply["error"] == "bad_request" and "at most" in reply["message"], reply
    for key in ("rec-1\n", "rec-1/../x", "..", "rec-" + "x" * 61):
        reply = recorder.call("set_state", recordings=[{**recording_entry("rec-1", media_base), "key": key}])
        assert reply["error"] == "bad_request", (key, reply)
    assert recorder.call("get_stats")["recordings"] == [] and recorder.process.poll() is None
    assert sorted(path.name for path in root.iterdir()) == []  # nothing was made for any of them


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (make system-deps)")
def test_links_planted_in_a_recording_folder_are_never_followed(recorder: RecorderProcess, root: Path,
                                                                media_base: int, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = {name: outside / name for name in ("sdp", "manifest", "playlist", "mp4", "secret")}
    for path in precious.values():
        path.write_text(f"keep {path.name}")
    (outside / "folder").mkdir()
    (outside / "folder" / "keep").write_text("keep")
    folder = root / "rec-40"
    folder.mkdir(parents=True)
    links = {".program.sdp": precious["sdp"], ".program.sdp.tmp": precious["sdp"],
             ".manifest.json.tmp": precious["manifest"], ".index.m3u8.tmp": precious["playlist"],
             "program.mp4": precious["mp4"], ".program.mp4.tmp": precious["mp4"], "part-000": outside / "folder",
             ".finalize": outside / "folder"}
    for name, target in links.items():
        os.symlink(target, folder / name)

    sender = start_sender(media_base, 8)
    try:
        assert recorder.call("set_state", recordings=[recording_entry("rec-40", media_base)])["refused"] == []
        index = folder / "index.m3u8"
        wait_until(lambda: index.exists() and index.read_text().count(".m4s") >= 2, 20, "two live segments")
        assert recorder.call("set_state", recordings=[])["ok"]
        done = recorder.wait_state("rec-40", ("finished", "failed"), timeout=25)
    finally:
        sender.kill()
        sender.wait()
    assert done["state"] == "finished", done
    for path in precious.values():
        assert path.read_text() == f"keep {path.name}", path
    assert os.listdir(outside / "folder") == ["keep"]
    assert not (folder / "program.mp4").is_symlink() and (folder / "program.mp4").stat().st_size > 10_000
    assert not (folder / "part-000").is_symlink() and any((folder / "part-000").glob("seg-*.m4s"))
    assert recorder.process.poll() is None


def test_the_writers_replace_a_link_instead_of_writing_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    folder = tmp_path / "rec-41"
    folder.mkdir()
    os.symlink(outside, folder / ".manifest.json.tmp")
    os.symlink(outside, folder / "manifest.json")
    manifest_file.write(folder, {"key": "rec-41"})
    os.symlink(outside, folder / ".index.m3u8.tmp")
    write_atomically(folder / "index.m3u8", "#EXTM3U\n")
    assert outside.read_text() == "keep"
    assert manifest_file.read(folder) == {"key": "rec-41"} and (folder / "index.m3u8").read_text() == "#EXTM3U\n"
    assert not (folder / "manifest.json").is_symlink()
    # remove_tree removes a link, not what it points at.
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("keep")
    os.symlink(target, folder / "part-000")
    remove_tree(folder / "part-000")
    assert not (folder / "part-000").exists() and (target / "keep").exists()


def test_finalizing_does_not_copy_a_linked_segment_from_outside_into_the_mp4(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"SECRET" * 1000)
    folder = tmp_path / "rec-42"
    (folder / "part-000").mkdir(parents=True)
    os.symlink(secret, folder / "part-000" / "init.mp4")
    os.symlink(secret, folder / "part-000" / "seg-00000.m4s")
    part = ComposedPart("part-000/init.mp4", (Segment("part-000/seg-00000.m4s", 2.0),))
    problem = remux(FFMPEG or "false", folder, [part], "program.mp4", 10**12)
    assert problem is not None and not (folder / "program.mp4").exists()  # nothing but links: nothing made
    assert secret.read_bytes() == b"SECRET" * 1000 and not (folder / ".finalize").exists()


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (make system-deps)")
def test_a_poisoned_key_folder_refuses_that_key_only(recorder: RecorderProcess, root: Path, media_base: int,
                                                     tmp_path: Path) -> None:
    """A file or a link where a key's folder should be: that key is refused with `storage_error`, the other
    lessons of the same set_state are recorded (before: the whole request failed, every push again)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "rec-61").write_text("not a folder")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "rec-62")
    good = recording_entry("rec-60", media_base + 4)
    for poisoned in ("rec-61", "rec-62"):
        reply = recorder.call("set_state", recordings=[recording_entry(poisoned, media_base), good])
        assert reply["ok"] is True, reply
        assert [(item["key"], item["error"]) for item in reply["refused"]] == [(poisoned, "storage_error")], reply
        assert [entry["key"] for entry in recorder.call("get_stats")["recordings"]] == ["rec-60"]
    assert (root / "rec-61").read_text() == "not a folder" and os.listdir(tmp_path / "elsewhere") == []
    assert recorder.process.poll() is None


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (make system-deps)")
def test_connections_that_never_say_hello_cannot_exhaust_or_lock_out_the_recorder(recorder: RecorderProcess) -> None:
    """Measured before: 320 silent connections were 320 threads and 20 of them sending 1 MiB without a newline
    28 MB more memory, without end (a local user without the secret could exhaust the recorder). Now the
    connections are capped, a silent one gives way to a new one, the hello line is bounded and timed, and an
    authenticated client is never the one that gives way."""
    port = recorder.control.port
    assert port is not None
    controller = socket.create_connection(("127.0.0.1", port), timeout=5)
    reader = controller.makefile("rb")
    controller.sendall(json.dumps({"op": "hello", "secret": SECRET}).encode() + b"\n")
    assert json.loads(reader.readline())["ok"] is True
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
    talkative = []
    for _ in range(10):
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        with contextlib.suppress(OSError):  # the recorder may already have closed it
            connection.sendall(b"x" * (1 << 20))
        talkative.append(connection)
    try:
        time.sleep(1)
        assert _threads(recorder.process.pid) <= sidecar.MAX_CONNECTIONS + 10
        controller.sendall(b'{"op": "get_stats"}\n')  # the authenticated connection still works
        assert json.loads(reader.readline())["ok"] is True
        started = time.monotonic()
        assert recorder.call("get_stats")["ok"]  # and a new client gets in at once
        assert time.monotonic() - started < 2
        # A connection that says nothing is closed after HELLO_SECONDS.
        with socket.create_connection(("127.0.0.1", port), timeout=sidecar.HELLO_SECONDS + 5) as late:
            opened = time.monotonic()
            with contextlib.suppress(ConnectionResetError):  # reset rather than closed: it ended either way
                assert late.recv(1024) == b""  # a timeout here (the recorder kept it) fails the test
            assert time.monotonic() - opened <= sidecar.HELLO_SECONDS + 2
    finally:
        for connection in (*silent, *talkative):
            connection.close()
        controller.close()
    assert recorder.process.poll() is None


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (make system-deps)")
def test_a_recording_whose_folder_is_replaced_does_not_take_the_others_down(recorder: RecorderProcess, root: Path,
                                                                          media_base: int) -> None:
    """Someone replaces one recording's folder with a file mid-lesson (an operator, a script on the volume):
    that recording cannot go on, the recorder and the other lesson do (before: the loop raised
    NotADirectoryError and the process exited, every lesson with a gap)."""
    import shutil

    sender = start_sender(media_base + 4, 20)
    try:
        reply = recorder.call("set_state", recordings=[recording_entry("rec-70", media_base),
                                                      recording_entry("rec-71", media_base + 4)])
        assert reply["refused"] == [], reply
        playlist = root / "rec-71" / "index.m3u8"
        wait_until(lambda: playlist.exists() and playlist.read_text().count("#EXTINF") >= 1, 20, "rec-71 segments")
        shutil.rmtree(root / "rec-70")
        (root / "rec-70").write_text("not a folder")
        before = playlist.read_text().count("#EXTINF")
        # rec-70 gets no media: its ffmpeg ends after the stall time (3 s) and the next part has no folder.
        wait_until(lambda: playlist.read_text().count("#EXTINF") >= before + 3, 25, "rec-71 going on")
        assert recorder.process.poll() is None
        assert {entry["key"] for entry in recorder.call("get_stats")["recordings"]} >= {"rec-71"}
    finally:
        sender.kill()
        sender.wait()
    errors = recorder.stop()
    assert errors.count("supervising failed") == 1, errors  # logged once, not every tick
    assert "rec-70" in errors
