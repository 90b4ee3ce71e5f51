"""Settings of classroom equipment in (RTMP push, RTSP pull): where each data plane's ingest process listens,
where classrooms publish RTMP, and the secret file of RTSP cameras (read by the control plane); the ingest
process's own ports (read by it, `make run`, compose and Kubernetes)."""

from __future__ import annotations

from services.common.settings import setting

INGESTS = setting(
    "RELAY_INGESTS", str, None,
    "`dataplane=host:port`, comma-separated: the ingest process beside each data plane (RTMP push, RTSP pull)",
    default_text="none (no RTMP/RTSP ingest)")
RTMP_PUBLIC_URLS = setting(
    "RELAY_RTMP_PUBLIC_URLS", str, None,
    "`dataplane=rtmp://host:1935/live`, comma-separated: the RTMP URL recording hosts publish to",
    default_text="what the ingest process reports")
RTSP_SOURCES_FILE = setting(
    "RELAY_INGEST_RTSP_SOURCES_FILE", str, None,
    "JSON file (a mounted secret) `{\"<classroom id>\": \"rtsp://user:password@camera/path\"}`: classrooms "
    "whose camera the platform pulls instead of waiting for an RTMP push")
CONTROL_PORT = setting("RELAY_INGEST_CONTROL_PORT", int, 7080, "the ingest process's control port")
METRICS_PORT = setting(
    "RELAY_INGEST_METRICS_PORT", int, 9466, "the ingest process's `/metrics` port",
    default_text="`9466` (`make run`: 9107)")
RTMP_PORT = setting("RELAY_RTMP_PORT", int, 1935, "the port the ingest's nginx-rtmp receives classrooms' RTMP on")
