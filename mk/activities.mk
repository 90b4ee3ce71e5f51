# Activities benchmark (not a test): a fictional city's uploads through gateway -> activities -> PostgreSQL
# -> outbox -> RabbitMQ -> reporting, beside RabbitMQ's own confirmed rate for messages of the same size.
# Smaller or larger: make bench-activities ACTIVITIES_BENCH_ARGS="--batches 20 --teachers 2000"
ACTIVITIES_BENCH_ARGS ?=

.PHONY: bench-activities
bench-activities: deps services-up ## Activities ingestion -> bulletin vs the broker's own rate (~1 min, 127.0.0.1 only)
	$(PY) bench/activities_bench.py $(ACTIVITIES_BENCH_ARGS)
