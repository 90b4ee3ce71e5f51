# Reporting benchmark (not a test): a fictional city in PostgreSQL, the monthly bulletin from the read
# models beside a GROUP BY over the raw rows, as a figures table (command, seconds, ratio, peak RSS).
# Smaller: make bench-reporting REPORTING_BENCH_ARGS="--teachers 6000 --activities 600000"
REPORTING_BENCH_ARGS ?=

.PHONY: bench-reporting
bench-reporting: deps services-up ## Monthly bulletin from the read models vs a GROUP BY over raw rows (benchmark)
	$(PY) bench/reporting_bench.py $(REPORTING_BENCH_ARGS)
