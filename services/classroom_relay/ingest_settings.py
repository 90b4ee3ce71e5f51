"""Settings of classroom equipment in (RTMP push, RTSP pull): where each data plane's ingest process listens,
where classrooms publish RTMP, and the secret file of RTSP cameras. Read by the control plane."""

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
