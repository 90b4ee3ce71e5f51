# Reliability and security: faults on the tests' own RabbitMQ node and PostgreSQL cluster,
# the authorisation matrix, schemathesis, secrets. Not part of `make test`; prints one table of figures.
# Included by the top-level Makefile (which defines PY and VENV); schemathesis is pinned in requirements.lock.

.PHONY: test-reliability

test-reliability: deps ## Faults on the tests' own RabbitMQ and PostgreSQL, authorisation, schemathesis (~5 min)
	$(VENV)/bin/ruff check tests/reliability
	$(VENV)/bin/pytest -q -p no:cacheprovider -rxXs -m reliability tests/reliability
