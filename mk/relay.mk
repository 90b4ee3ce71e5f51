# Classroom relay data plane: benchmark and system dependencies.
# Included by the top-level Makefile, which defines PY (the venv's python).

.PHONY: bench-relay test-relay

# RELAY_BENCH_ARGS="--code-root DIR" measures another checkout's data plane with the same harness.
bench-relay: deps ## Forwarding benchmark of the relay data plane (127.0.0.1 only, bounded, ~1.5 min)
	$(PY) bench/relay_bench.py $(RELAY_BENCH_ARGS)

# ffmpeg: the real encoder/decoder of the relay's end-to-end tests.
system-deps::
	@command -v ffmpeg >/dev/null 2>&1 || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ffmpeg; }

test-relay: deps system-deps ## The relay's data-plane tests only (unit, subprocess, ffmpeg end to end, fuzz)
	$(PY) -m pytest tests/relay -q
