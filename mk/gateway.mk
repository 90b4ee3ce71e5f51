# Gateway targets; included by the main Makefile (which defines PY = .venv/bin/python).

GATEWAY_BENCH_ARGS ?=

.PHONY: bench-gateway
bench-gateway: deps services-up ## Gateway vs bare WSGI app, same PostgreSQL read, same load (< 2 min, 127.0.0.1 only)
	$(PY) bench/gateway_bench.py $(GATEWAY_BENCH_ARGS)
