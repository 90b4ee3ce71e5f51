# The recorder (services/classroom_relay/recorder): records live sessions with ffmpeg -c copy (docs/recording.md).
# Included by the top-level Makefile, which defines PY (the venv's python). ffmpeg comes from system-deps
# (mk/ingest.mk, mk/relay.mk).

.PHONY: test-recorder bench-recording

test-recorder: deps system-deps ## The recorder with real ffmpeg senders: HLS, MP4, gaps, restarts, disk guard (~3 min)
	$(PY) -m pytest tests/recorder -q

bench-recording: deps system-deps ## N recorded sessions at ~4 Mbit/s: gaps, CPU and memory per session, playlist latency; then bench-recording-relay (~8 min)
	$(PY) bench/recording.py $(RECORDING_BENCH_ARGS)
	$(PY) bench/recording_relay.py $(RECORDING_RELAY_BENCH_ARGS)
