# Classroom relay data plane: benchmark and system dependencies.
# Included by the top-level Makefile, which defines PY (the venv's python).

.PHONY: bench-relay test-relay bench-recording-relay

# RELAY_BENCH_ARGS="--code-root DIR" measures another checkout's data plane with the same harness.
bench-relay: deps ## Forwarding benchmark of the relay data plane (127.0.0.1 only, bounded, ~1.5 min)
	$(PY) bench/relay_bench.py $(RELAY_BENCH_ARGS)

bench-recording-relay: deps system-deps ## The data plane forwarding lessons with the recorder attached vs without, same run (~3 min)
	$(PY) bench/recording_relay.py $(RECORDING_RELAY_BENCH_ARGS)

# ffmpeg and GStreamer: the real encoders/decoders of the relay's tests (GStreamer's rtpbin is the receiver
# that sends RTCP: reports, NACK, PLI; x264enc behind it honours PLI). cc builds the benchmark's C forwarder.
RELAY_GST_PACKAGES := gstreamer1.0-tools gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-plugins-ugly gstreamer1.0-libav
system-deps::
	@command -v ffmpeg >/dev/null 2>&1 && command -v gst-launch-1.0 >/dev/null 2>&1 \
		&& gst-inspect-1.0 x264enc >/dev/null 2>&1 && gst-inspect-1.0 rtpbin >/dev/null 2>&1 \
		&& gst-inspect-1.0 avdec_h264 >/dev/null 2>&1 || { apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ffmpeg $(RELAY_GST_PACKAGES); }

test-relay: deps system-deps ## The relay's data-plane tests only (unit, subprocess, ffmpeg/GStreamer peers, fuzz)
	$(PY) -m pytest tests/relay -q
