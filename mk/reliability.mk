# Reliability and security (issue 7): faults on the tests' own RabbitMQ node and PostgreSQL cluster,
# the authorisation matrix, schemathesis, secrets. Not part of `make test`; prints one table of figures.
# Included by the top-level Makefile (which defines PY and VENV).
SCHEMATHESIS_VERSION ?= 4.32.5

.PHONY: test-reliability

test-reliability: deps
	@test -x $(VENV)/bin/st || $(VENV)/bin/pip install --quiet --disable-pip-version-check schemathesis==$(SCHEMATHESIS_VERSION)
	$(VENV)/bin/ruff check tests/reliability
	$(VENV)/bin/pytest -q -p no:cacheprovider -rxXs -m reliability tests/reliability
