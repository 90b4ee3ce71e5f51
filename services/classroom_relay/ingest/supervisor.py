"""Ingest desired state → running hops and ffmpeg processes: started when a session's classroom appears in the
state, stopped when it leaves it, restarted with back-off when ffmpeg exits while it should run.

An RTMP ingest runs its ffmpeg only while the classroom's host publishes (the RTMP server's callbacks say so);
an RTSP ingest runs it for the whole session, reconnecting to the camera after every failure.
"""

from __future__ import annotations

import logging
import random
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from . import pipelines
from .keys import check_key, parse_key, stream_key, token_binding
from .rtp_hop import TrackHop

log = logging.getLogger("lianxiao.ingest")

BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0
STABLE_SECONDS = 10.0  # a process that ran this long resets the back-off
DEFAULT_CLOCK_RATES = {"audio": 48_000, "video": 90_000}


@dataclass(frozen=True)
class IngestSpec:
    session: str
    classroom: str
    kind: str  # rtmp | rtsp
    token: str
    relay: tuple[str, int]
    tracks: tuple[dict, ...]
    rtsp_url: str | None = None  # credentials inside: never logged, never in a reply


@dataclass
class Ingest:
    spec: IngestSpec
    hops: dict[str, TrackHop]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    publishing: bool = False  # RTMP: the host is publishing now
    restarts: int = 0  # starts after a failure (reconnects)
    failures: int = 0  # consecutive
    next_start_at: float = 0.0
    reconnect_pending: bool = False  # the last ffmpeg failed: the next start is a reconnect
    exits: list[int] = field(default_factory=list)  # the last return codes, for get_stats
    last_error: str = ""
    error_file: IO[bytes] = field(default_factory=tempfile.TemporaryFile)  # ffmpeg's stderr

    @property
    def key(self) -> tuple[str, str]:
        return self.spec.session, self.spec.classroom

    def wanted(self) -> bool:
        return self.spec.kind == "rtsp" or self.publishing


class Supervisor:
    def __init__(self, ffmpeg: str, rtmp_play_base: str | None, relay_bind_host: str = "127.0.0.1") -> None:
        self.ffmpeg = ffmpeg
        self.rtmp_play_base = rtmp_play_base  # e.g. rtmp://127.0.0.1:1935/live
        self.relay_bind_host = relay_bind_host
        self.ingests: dict[tuple[str, str], Ingest] = {}
        self.lock = threading.RLock()
        self.refused: dict[str, int] = {}  # RTMP publishes refused, by reason
        self._wake = threading.Event()
        self._stopped = threading.Event()

    # desired state -------------------------------------------------------------------------------------------
    def set_state(self, specs: list[IngestSpec]) -> list[dict]:
        wanted = {(spec.session, spec.classroom): spec for spec in specs}
        with self.lock:
            for key in [key for key in self.ingests if key not in wanted]:
                self._stop(self.ingests.pop(key))
            for key, spec in wanted.items():
                current = self.ingests.get(key)
                if current is not None and self._same_pipeline(current.spec, spec):
                    current.spec = spec
                    for hop in current.hops.values():
                        hop.update(spec.token, spec.relay)
                    continue
                if current is not None:
                    self._stop(current)
                self.ingests[key] = self._create(spec)
            replies = [self._describe(self.ingests[key]) for key in wanted]
        self._wake.set()
        return replies

    @staticmethod
    def _same_pipeline(old: IngestSpec, new: IngestSpec) -> bool:
        return (old.kind, old.tracks, old.rtsp_url) == (new.kind, new.tracks, new.rtsp_url)

    def _create(self, spec: IngestSpec) -> Ingest:
        hops = {}
        for track in spec.tracks:
            clock_rate = track.get("clock_rate") or DEFAULT_CLOCK_RATES[track["kind"]]
            hop = TrackHop(track["track"], track["kind"], clock_rate, spec.token, spec.relay, self.relay_bind_host)
            hop.start()
            hops[track["track"]] = hop
        log.info("ingest %s/%s (%s) started: tracks %s", spec.session, spec.classroom, spec.kind, list(hops))
        return Ingest(spec, hops)

    def _describe(self, ingest: Ingest) -> dict:
        spec = ingest.spec
        reply: dict[str, Any] = {"session": spec.session, "classroom": spec.classroom, "kind": spec.kind,
                                 "senders": {name: list(hop.upstream_address) for name, hop in ingest.hops.items()}}
        if spec.kind == "rtmp":
            reply["stream_key"] = stream_key(spec.token)
            reply["expires_at"] = token_binding(spec.token).expires_at
        else:
            reply["rtsp_url"] = pipelines.redact(spec.rtsp_url or "")
        return reply

    # RTMP server callbacks -----------------------------------------------------------------------------------
    def count_refusal(self, reason: str) -> None:
        with self.lock:
            self.refused[reason] = self.refused.get(reason, 0) + 1

    def on_publish(self, key: str) -> tuple[bool, str]:
        """May this stream key publish now? (allowed, reason); refusals are counted by reason."""
        claimed = parse_key(key)
        with self.lock:
            ingest = self.ingests.get(claimed) if claimed else None
            if claimed is None:
                reason: str | None = "malformed"
            elif ingest is None or ingest.spec.kind != "rtmp":
                reason = "not_live"  # no such classroom broadcasting by RTMP in a live session here
            elif ingest.publishing:
                reason = "already_publishing"
            else:
                reason = check_key(key, ingest.spec.token)
            if reason is not None:
                self.count_refusal(reason)
                log.warning("RTMP publish refused (%s) for %s", reason, claimed or "a malformed key")
                return False, reason
            assert ingest is not None
            ingest.publishing = True
            ingest.failures, ingest.next_start_at = 0, 0.0
        self._wake.set()
        return True, "ok"

    def on_publish_done(self, key: str) -> None:
        claimed = parse_key(key)
        with self.lock:
            ingest = self.ingests.get(claimed) if claimed else None
            if ingest is not None and ingest.publishing and check_key(key, ingest.spec.token) in (None, "expired"):
                ingest.publishing = False
                self._terminate(ingest)
        self._wake.set()

    # the loop ------------------------------------------------------------------------------------------------
    def run(self) -> None:
        while not self._stopped.is_set():
            self.tick(time.monotonic())
            self._wake.wait(0.25)
            self._wake.clear()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        with self.lock:
            for ingest in self.ingests.values():
                self._stop(ingest)
            self.ingests.clear()

    def tick(self, now: float) -> None:
        with self.lock:
            for ingest in self.ingests.values():
                self._supervise(ingest, now)

    def _supervise(self, ingest: Ingest, now: float) -> None:
        process = ingest.process
        if process is not None and process.poll() is not None:
            ingest.exits.append(process.returncode)
            del ingest.exits[:-10]
            ran = now - ingest.started_at
            ingest.process = None
            ingest.reconnect_pending = True
            ingest.failures = 0 if ran >= STABLE_SECONDS else ingest.failures + 1
            delay = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** max(0, ingest.failures - 1))
            ingest.next_start_at = now + delay * random.uniform(0.8, 1.2)
            ingest.last_error = self._last_error(ingest)
            log.warning("ingest %s/%s: ffmpeg exited %s after %.1f s (%s); next try in %.1f s", *ingest.key,
                        process.returncode, ran, ingest.last_error, delay)
        if ingest.process is None and ingest.wanted() and now >= ingest.next_start_at:
            if ingest.reconnect_pending:
                ingest.restarts += 1
                ingest.reconnect_pending = False
            self._start(ingest, now)

    def _start_command(self, ingest: Ingest) -> list[str]:
        spec = ingest.spec
        outs = [pipelines.TrackOut(t["track"], t["kind"], t.get("codec") or ("aac" if t["kind"] == "audio" else "h264"),
                                   int(t.get("payload_type") or (97 if t["kind"] == "audio" else 96)),
                                   ingest.hops[t["track"]].local_port)
                for t in spec.tracks]
        ssrc_base = random.getrandbits(31)  # a new upstream SSRC per run: the hop sees where a new run begins
        if spec.kind == "rtmp":
            return pipelines.rtmp_command(self.ffmpeg, f"{self.rtmp_play_base}/{stream_key(spec.token)}", outs,
                                          ssrc_base)
        return pipelines.rtsp_command(self.ffmpeg, spec.rtsp_url or "", outs, ssrc_base)

    def _start(self, ingest: Ingest, now: float) -> None:
        ingest.error_file.seek(0)
        ingest.error_file.truncate()
        ingest.process = subprocess.Popen(self._start_command(ingest), stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=ingest.error_file, start_new_session=True)
        ingest.started_at = now

    @staticmethod
    def _last_error(ingest: Ingest) -> str:
        """ffmpeg's last error line, with the RTSP URL (and its credentials) taken out."""
        ingest.error_file.seek(0, 2)
        ingest.error_file.seek(max(0, ingest.error_file.tell() - 2048))
        lines = ingest.error_file.read().decode(errors="replace").strip().splitlines()
        text = lines[-1] if lines else ""
        if ingest.spec.rtsp_url:
            text = text.replace(ingest.spec.rtsp_url, pipelines.redact(ingest.spec.rtsp_url))
        return text[:300]

    def _terminate(self, ingest: Ingest) -> None:
        process, ingest.process = ingest.process, None
        pipelines.stop_child(process)

    def _stop(self, ingest: Ingest) -> None:
        self._terminate(ingest)
        for hop in ingest.hops.values():
            hop.stop()
        ingest.error_file.close()
        log.info("ingest %s/%s stopped", *ingest.key)

    # what the metrics and get_stats read ---------------------------------------------------------------------
    def snapshot(self) -> dict:
        now = time.monotonic()
        with self.lock:
            ingests = []
            for ingest in self.ingests.values():
                tracks = [hop.snapshot(now) for hop in ingest.hops.values()]
                ingests.append({
                    **self._describe(ingest),
                    "running": ingest.process is not None and ingest.process.poll() is None,
                    "publishing": ingest.publishing if ingest.spec.kind == "rtmp" else None,
                    "connected": bool(tracks) and all(track["connected"] for track in tracks),
                    "reconnects": ingest.restarts, "exits": list(ingest.exits), "last_error": ingest.last_error,
                    "tracks": tracks,
                })
            return {"ingests": ingests, "refused_publishes": dict(self.refused)}
