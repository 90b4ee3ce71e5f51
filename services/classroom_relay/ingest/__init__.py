"""Classroom equipment in: RTMP push and RTSP pull repackaged to RTP (no video re-encoding) and fed into the
relay's data plane as a classroom's tracks. A process of its own beside the data plane (`python -m
services.classroom_relay.ingest`): no database, no broker, told its desired state over a small control channel."""
