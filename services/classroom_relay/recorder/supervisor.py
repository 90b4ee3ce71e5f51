"""Desired recordings → ffmpeg runs: started when a key appears in the state, finalized when it leaves it,
a new part (after a gap) when ffmpeg ends while the key should still record; the disk guard.

Every ffmpeg is started from the thread that runs `run()` (the process's main thread), so the kernel ends it
with that thread (pipeline.die_with_parent). Finalizing (stopping ffmpeg, the final playlist, the MP4 remux)
runs on its own thread per recording: the loop keeps serving the others meanwhile.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Iterable
from typing import Any

from services.common.storage import BadKey, FilesystemStorage, Usage, write_file

from . import finalize
from . import manifest as manifest_file
from .pipeline import COURSEWARE, PROGRAM, command, die_with_parent
from .recording import Recording, RecordingSpec, Stream

log = logging.getLogger("lianxiao.recorder")

BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 2.0  # short: media may start any moment, and every second waited is a second lost
GUARD_INTERVAL_SECONDS = 1.0
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
OUTPUTS = ((PROGRAM, "program_mp4", "program.mp4"), (COURSEWARE, "courseware_mp4", "courseware.mp4"))


class Supervisor:
    def __init__(self, storage: FilesystemStorage, ffmpeg: str, *, segment_seconds: int, stall_seconds: int,
                 min_free_bytes: int, low_free_bytes: int, live_window: int = 6) -> None:
        self.storage = storage
        self.ffmpeg = ffmpeg
        self.segment_seconds = segment_seconds
        self.stall_seconds = stall_seconds
        self.min_free_bytes = min_free_bytes
        self.low_free_bytes = low_free_bytes
        self.live_window = live_window
        self.lock = threading.RLock()
        self.recordings: dict[str, Recording] = {}  # recording or finalizing
        self.finished: dict[str, dict] = {}  # reported until the control plane forgets them
        self.orphans: dict[str, dict] = {}  # left recording by an earlier run, not (yet) in the desired state
        self.finalizers: list[threading.Thread] = []
        self.usage = Usage(0, 0)
        self.guard = "ok"
        self._guard_checked = 0.0
        self.troubles: dict[str, str] = {}  # key → the error its supervision last failed with
        self.counters: dict[str, Any] = {"segments": {PROGRAM: 0, COURSEWARE: 0}, "gaps": {}, "restarts": 0,
                                         "bytes": 0, "refused": {}, "latency_buckets": [0] * len(LATENCY_BUCKETS),
                                         "latency_count": 0, "latency_sum": 0.0}
        self._wake = threading.Event()
        self._stopped = threading.Event()
        storage.ensure()
        self._scan()
        self.check_guard(force=True)

    def _scan(self) -> None:
        """What an earlier run left: recordings to resume (or finalize) and finished ones not yet forgotten."""
        for key in self.storage.list_keys():
            saved = manifest_file.read(self.storage.folder(key))
            if saved is None or saved.get("key") != key:
                continue
            if saved.get("state") in manifest_file.LIVE_STATES:
                self.orphans[key] = saved
            elif not saved.get("forgotten"):
                self.finished[key] = {**saved, "segments": None, "last_segment_at": None}

    # disk guard ----------------------------------------------------------------------------------------------
    def check_guard(self, force: bool = False) -> str:
        now = time.monotonic()
        if force or now - self._guard_checked >= GUARD_INTERVAL_SECONDS:
            self._guard_checked = now
            self.usage = self.storage.usage()
            free = self.usage.free_bytes
            guard = "full" if free < self.min_free_bytes else "low" if free < self.low_free_bytes else "ok"
            if guard != self.guard:
                log.warning("recorder disk guard %s → %s (%d bytes free)", self.guard, guard, free)
            self.guard = guard
        return self.guard

    def storage_info(self) -> dict:
        return {"root": str(self.storage.root), "free_bytes": self.usage.free_bytes,
                "total_bytes": self.usage.total_bytes, "min_free_bytes": self.min_free_bytes,
                "low_free_bytes": self.low_free_bytes}

    # desired state -------------------------------------------------------------------------------------------
    def set_state(self, specs: list[RecordingSpec]) -> list[dict]:
        """Make it so; returns the keys refused ({key, error, message})."""
        refused: list[dict] = []
        wanted = {spec.key: spec for spec in specs}
        with self.lock:
            guard = self.check_guard(force=True)
            for key, recording in list(self.recordings.items()):
                if key not in wanted and recording.state == "recording":
                    self._begin_finalize(recording, "finished")
            for key in [key for key in self.orphans if key not in wanted]:
                self._finalize_orphan(key, self.orphans.pop(key))
            for key, spec in wanted.items():
                try:
                    problem = self._apply(spec, guard)
                except (OSError, BadKey) as error:
                    # One key's folder failing (a file or a link planted in its place, a permission) refuses
                    # that key only: the lessons after it in the list are still recorded.
                    problem = ("storage_error", f"{key}: {error}")
                if problem is not None:
                    refused.append({"key": key, "error": problem[0], "message": problem[1]})
                    self.counters["refused"][problem[0]] = self.counters["refused"].get(problem[0], 0) + 1
        self._wake.set()
        return refused

    def _apply(self, spec: RecordingSpec, guard: str) -> tuple[str, str] | None:
        current = self.recordings.get(spec.key)
        if current is not None:
            if current.state != "recording":
                if current.final_state == "stopped_disk_full":
                    return "disk_full", f"{spec.key} was stopped because the recorder's disk is full"
                return "finished", f"{spec.key} is finalizing; a new recording needs a new key"
            self._update(current, spec)
            return None
        finished = self.finished.get(spec.key)
        if finished is not None:
            if finished.get("state") == "stopped_disk_full":
                return "disk_full", f"{spec.key} was stopped because the recorder's disk is full"
            return "finished", f"{spec.key} has ended; a new recording needs a new key"
        if guard == "full":
            return "disk_full", (f"{self.usage.free_bytes} bytes free on the recorder's disk, below "
                                 f"RECORDER_MIN_FREE_BYTES={self.min_free_bytes}")
        folder = self.storage.folder(spec.key)
        saved = self.orphans.pop(spec.key, None) or manifest_file.read(folder)
        if saved is not None and saved.get("state") not in manifest_file.LIVE_STATES:
            self.finished[spec.key] = {**saved, "segments": None, "last_segment_at": None}
            return "finished", f"{spec.key} has ended; a new recording needs a new key"
        folder.mkdir(parents=True, exist_ok=True)
        recording = Recording(spec, folder, self.segment_seconds)
        if saved is not None:
            recording.resume(saved)
            log.info("recording %s resumed after a recorder restart", spec.key)
        else:
            log.info("recording %s started (session %s, keep=%s)", spec.key, spec.session, spec.keep)
        recording.save()
        self.recordings[spec.key] = recording
        return None

    def _update(self, recording: Recording, spec: RecordingSpec) -> None:
        """The same key with other media (the relay restarted, a track came or went): affected streams end
        their part (a gap) and go on from the new SDP."""
        if spec.streams == recording.spec.streams:
            recording.spec = spec
            return
        for name, sdp in spec.streams.items():
            stream = recording.streams.get(name)
            if stream is None:
                recording.streams[name] = Stream(name, sdp)
            elif stream.sdp != sdp:
                stream.sdp = sdp
                recording.open_gap(stream, "source_changed")
                self._kill(stream)
        for name in set(recording.streams) - set(spec.streams):
            self._kill(recording.streams[name])
        recording.spec = spec

    # the loop ------------------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """From a signal handler: `run()` returns soon; then call stop()."""
        self._stopped.set()
        self._wake.set()

    def run(self) -> None:
        while not self._stopped.is_set():
            self.tick(time.monotonic())
            self._wake.wait(0.2)
            self._wake.clear()

    def tick(self, now: float) -> None:
        with self.lock:
            if self.check_guard() == "full":
                for recording in list(self.recordings.values()):
                    if recording.state == "recording":
                        log.error("recording %s stopped: the recorder's disk is full", recording.spec.key)
                        self._begin_finalize(recording, "stopped_disk_full")
            for recording in list(self.recordings.values()):
                if recording.state != "recording":
                    continue
                try:
                    for stream in list(recording.streams.values()):
                        if stream.name in recording.spec.streams:
                            self._supervise(recording, stream, now)
                    self._count(recording)
                    self.troubles.pop(recording.spec.key, None)
                except Exception as error:
                    # One recording's trouble (its folder gone, a disk error) is logged once and retried on the
                    # next tick; before, it ended the loop and the process with it: every lesson got a gap.
                    if self.troubles.get(recording.spec.key) != repr(error):
                        self.troubles[recording.spec.key] = repr(error)
                        log.error("recording %s: supervising failed (%r); trying again", recording.spec.key, error)
            self.finalizers = [thread for thread in self.finalizers if thread.is_alive()]

    def _supervise(self, recording: Recording, stream: Stream, now: float) -> None:
        recording.refresh(stream, now)
        process = stream.process
        if process is not None and process.poll() is not None:
            stream.process = None
            recording.refresh(stream, now)
            stream.last_error = last_error(stream)
            reason = ("stall" if stream.killed_for_stall else
                      "media_stopped" if "timed out" in stream.last_error else "ffmpeg_exit")
            stream.killed_for_stall = False
            if stream.parts and stream.parts[-1].playlist.segments:
                recording.open_gap(stream, reason)
                stream.failures, stream.next_start_at = 0, now
                log.warning("recording %s/%s: part %d ended (%s, exit %s: %s)", recording.spec.key, stream.name,
                            stream.parts[-1].index, reason, process.returncode, stream.last_error)
            else:
                stream.failures += 1
                stream.next_start_at = now + min(BACKOFF_MAX_SECONDS,
                                                 BACKOFF_FIRST_SECONDS * 2 ** (stream.failures - 1))
            recording.save()
        elif process is not None:
            # Backstop: ffmpeg stops by itself when media stops (-listen_timeout); one that runs on without
            # writing a segment is stuck, and is replaced.
            waited = self.stall_seconds + 2 * self.segment_seconds + 5
            if not stream.parts or not stream.parts[-1].playlist.segments:
                waited += 5
            if now - stream.last_progress > waited:
                log.warning("recording %s/%s: no segment for %.0f s; restarting ffmpeg", recording.spec.key,
                            stream.name, now - stream.last_progress)
                stream.killed_for_stall = True
                process.kill()
        if stream.process is None and now >= stream.next_start_at:
            self._start(recording, stream, now)

    def _start(self, recording: Recording, stream: Stream, now: float) -> None:
        if stream.parts:
            stream.restarts += 1
            self.counters["restarts"] += 1
        part = recording.new_part(stream, now)
        sdp_path = recording.folder / f".{stream.name}.sdp"
        write_file(sdp_path, stream.sdp)
        stream.error_file.seek(0)
        stream.error_file.truncate()
        stream.process = subprocess.Popen(
            command(self.ffmpeg, sdp_path, recording.folder / part.folder, keep=recording.spec.keep,
                    segment_seconds=self.segment_seconds, stall_seconds=self.stall_seconds,
                    live_window=self.live_window),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stream.error_file,
            start_new_session=True, preexec_fn=die_with_parent)
        recording.save()

    def _count(self, recording: Recording) -> None:
        counters = self.counters
        for name, stream in recording.streams.items():
            added = stream.segments() - stream.counted
            if added > 0:
                counters["segments"][name] = counters["segments"].get(name, 0) + added
            stream.counted = stream.segments()
        counters["bytes"] += recording.new_bytes
        recording.new_bytes = 0
        for latency in recording.new_latencies:
            counters["latency_count"] += 1
            counters["latency_sum"] += latency
            for index, bound in enumerate(LATENCY_BUCKETS):
                if latency <= bound:
                    counters["latency_buckets"][index] += 1
        recording.new_latencies.clear()
        for gap in recording.gaps[recording.gaps_counted:]:
            counters["gaps"][gap["reason"]] = counters["gaps"].get(gap["reason"], 0) + 1
        recording.gaps_counted = len(recording.gaps)

    @staticmethod
    def _kill(stream: Stream) -> None:
        if stream.process is not None and stream.process.poll() is None:
            stream.process.kill()

    # the end of a recording ----------------------------------------------------------------------------------
    def _begin_finalize(self, recording: Recording, final_state: str) -> None:
        recording.state = "finalizing"
        recording.final_state = final_state
        recording.ended_at = time.time()
        recording.save()
        thread = threading.Thread(target=self._finalize, args=(recording, final_state),
                                  name=f"finalize-{recording.spec.key}", daemon=True)
        self.finalizers.append(thread)
        thread.start()

    def _finalize_orphan(self, key: str, saved: dict) -> None:
        """A recording an earlier run left in progress whose session has ended meanwhile."""
        streams = {str(part.get("stream", PROGRAM)) for part in saved.get("parts", []) if isinstance(part, dict)}
        spec = RecordingSpec(key, str(saved.get("session", "")), bool(saved.get("keep", True)), "",
                             tuple(track for track in saved.get("tracks", []) if isinstance(track, dict)),
                             {name: "" for name in streams if name in (PROGRAM, COURSEWARE)})
        recording = Recording(spec, self.storage.folder(key), self.segment_seconds)
        recording.resume(saved)
        self.recordings[key] = recording
        log.info("recording %s: left in progress by an earlier run, its session over: finalizing", key)
        self._begin_finalize(recording, "finished")

    def _finalize(self, recording: Recording, final_state: str) -> None:
        key = recording.spec.key
        try:
            self._stop_streams(recording.streams.values())
            with self.lock:
                for stream in recording.streams.values():
                    recording.refresh(stream, time.monotonic())
                    stream.open_gap = None  # after the last part nothing follows: not a gap
                self._count(recording)
            has_media = any(stream.segments() for stream in recording.streams.values())
            if recording.spec.keep:
                for stream in recording.streams.values():
                    if stream.parts:
                        recording.compose(stream, ended=True)
                for stream_name, file_key, output in OUTPUTS:
                    parts = recording.composed_parts(stream_name)
                    if not any(part.segments for part in parts):
                        continue
                    problem = finalize.remux(self.ffmpeg, recording.folder, parts, output,
                                             self.storage.usage().free_bytes)
                    if problem is None:
                        recording.files[file_key] = output
                    else:
                        recording.notes.append(f"{output}: {problem}")
                        log.error("recording %s: %s not written: %s", key, output, problem)
                recording.bytes = self.storage.usage_bytes(key)
            else:
                self.storage.delete(key)
                recording.files = {name: None for name in recording.files}
            recording.state = final_state if has_media else "failed"
            if not has_media:
                recording.notes.append("no media arrived")
        except Exception as error:  # a recording that cannot finish is reported failed; the recorder goes on
            log.exception("recording %s: finalizing failed", key)
            recording.state = "failed"
            recording.notes.append(f"finalizing failed: {error}")
        recording.save()
        for stream in recording.streams.values():
            stream.error_file.close()
        with self.lock:
            self.finished[key] = recording.stats()
            self.recordings.pop(key, None)
        log.info("recording %s %s: %.1f s, %d bytes, gaps %d", key, recording.state,
                 recording.manifest()["duration_seconds"], recording.bytes, len(recording.gaps))

    def _stop_streams(self, streams: Iterable[Stream]) -> None:
        """One SIGINT each (ffmpeg ends its last segment and playlist), SIGKILL what still runs after
        the stall time (it also ends by itself then, -listen_timeout) and a margin."""
        running = [stream.process for stream in streams if stream.process is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(2)  # SIGINT
        deadline = time.monotonic() + self.stall_seconds + 4
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    # control ------------------------------------------------------------------------------------------------
    def forget(self, keys: list[str]) -> list[str]:
        forgotten = []
        with self.lock:
            for key in keys:
                entry = self.finished.pop(key, None)
                if entry is None:
                    continue
                forgotten.append(key)
                folder = self.storage.folder(key)
                saved = manifest_file.read(folder)
                if saved is not None:
                    manifest_file.write(folder, {**saved, "forgotten": True})
        return forgotten

    def snapshot(self) -> dict:
        with self.lock:
            return {"guard": self.guard, "storage": self.storage_info(),
                    "recordings": [*(recording.stats() for recording in self.recordings.values()),
                                   *self.finished.values()],
                    "active": sum(recording.state == "recording" for recording in self.recordings.values()),
                    "counters": {name: (dict(value) if isinstance(value, dict) else
                                        list(value) if isinstance(value, list) else value)
                                 for name, value in self.counters.items()}}

    def stop(self) -> None:
        """The recorder is stopping (not the lessons): every part ends cleanly, recordings stay `recording`
        so the next run resumes them after a gap; finalizing ones get a bounded wait."""
        self._stopped.set()
        self._wake.set()
        with self.lock:
            live = [recording for recording in self.recordings.values() if recording.state == "recording"]
            for recording in live:
                recording.state = "stopping"  # the loop must not start a new part meanwhile
        self._stop_streams(stream for recording in live for stream in recording.streams.values())
        with self.lock:
            for recording in live:
                for stream in recording.streams.values():
                    recording.refresh(stream, time.monotonic())
                recording.state = "recording"
                recording.save()
        for thread in list(self.finalizers):
            thread.join(timeout=30)


def last_error(stream: Stream) -> str:
    stream.error_file.seek(0, 2)
    stream.error_file.seek(max(0, stream.error_file.tell() - 2048))
    lines = stream.error_file.read().decode(errors="replace").strip().splitlines()
    return lines[-1][:300] if lines else ""
