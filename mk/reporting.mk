# Reporting benchmark (not a test): a fictional city in PostgreSQL, the monthly bulletin from the read
# models beside a GROUP BY over the raw rows. Smaller: make bench-reporting REPORTING_BENCH_ARGS="--teachers 3000 --activities 300000"
REPORTING_BENCH_ARGS ?=

.PHONY: bench-reporting
bench-reporting: deps services-up
	/usr/bin/time -v $(PY) bench/reporting_bench.py $(REPORTING_BENCH_ARGS) 2>&1 | grep -v "^\s" ; true
