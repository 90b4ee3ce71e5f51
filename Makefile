# lianxiao — the two commands: `make run` runs the platform, `make test` passes the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help run demo test test-fast lint typecheck system-deps deps services-up migrate clean

# Every target says what it does in a `## ` comment on its own line; `make help` lists them (mk/*.mk too).
help: ## List the targets
	@awk 'BEGIN { FS = ":+[^#]*## " } /^[a-zA-Z_-]+:+[^=#]*## / && !seen[$$1]++ { printf "  make %-18s %s\n", $$1, $$2 }' \
		$(MAKEFILE_LIST)

# The virtual environment, installed exactly from the lock file; reinstalled when the lock changes.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

deps: $(STAMP) ## Create .venv exactly from requirements.lock (again when the lock changes)

# Debian packages the tests use as real peers (ffmpeg, promtool); each fragment adds its own.
system-deps:: ## Install the Debian packages the tests use as real peers (ffmpeg, prometheus)
	@true

services-up: ## Make sure the local RabbitMQ (with management) and PostgreSQL answer
	@scripts/ensure-services.sh

migrate: deps ## Migrate every service's database (DATABASE_URL, default SQLite files under var/)
	$(PY) -m services.common.migrations upgrade

run: deps system-deps ## Run the whole platform on this machine (Ctrl-C stops it)
	$(PY) deploy/run_local.py

demo: deps ## Load a small fictional bureau and print a token to try the API
	$(PY) -m services.accounts.cli demo

lint: deps ## ruff over the code, mypy over services/
	$(VENV)/bin/ruff check $(wildcard services tests bench deploy scripts examples)
	$(VENV)/bin/mypy

typecheck: deps ## mypy over services/ (configured in pyproject.toml)
	$(VENV)/bin/mypy

test: deps system-deps services-up lint ## Install what is missing and run every test
	$(VENV)/bin/pytest -q -p no:cacheprovider

test-fast: deps ## The tests that need no broker or database
	$(VENV)/bin/pytest -q -p no:cacheprovider -m "not integration"

clean: ## Remove .venv, var/ and the tools' caches
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache

-include mk/*.mk

.PHONY: bench-services
bench-services: deps services-up ## Start-up time and idle memory of each service (benchmark)
	$(PY) bench/services_idle.py
