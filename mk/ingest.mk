# Classroom equipment in (services/classroom_relay/ingest): RTMP push and RTSP pull into the relay.
# Included by the top-level Makefile, which defines PY (the venv's python).

.PHONY: test-ingest

# nginx with Debian's RTMP module is the RTMP server classrooms publish to; ffmpeg repackages to RTP;
# GStreamer's RTSP server (through python3-gst-1.0, run with /usr/bin/python3) stands in for an IP camera.
INGEST_PACKAGES := nginx-light libnginx-mod-rtmp ffmpeg gir1.2-gst-rtsp-server-1.0 python3-gst-1.0 \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-libav
system-deps::
	@test -e /usr/lib/nginx/modules/ngx_rtmp_module.so && command -v ffmpeg >/dev/null 2>&1 \
		&& /usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import GstRtspServer' \
		>/dev/null 2>&1 || { apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(INGEST_PACKAGES); }

test-ingest: deps system-deps ## RTMP push / RTSP pull into the relay with real peers (nginx-rtmp, ffmpeg, GStreamer)
	$(PY) -m pytest tests/ingest -q
