# lianxiao — the two commands: `make run` runs the platform, `make test` passes the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help run demo test test-fast lint system-deps deps services-up migrate clean

help:
	@echo "make run        run the whole platform on this machine (Ctrl-C stops it)"
	@echo "make demo       load a small fictional bureau and print a token to try the API"
	@echo "make test       install what is missing and run every test"
	@echo "make lint       ruff"
	@echo "make bench-gateway | bench-relay   benchmarks (not tests)"

# The virtual environment, installed exactly from the lock file; reinstalled when the lock changes.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

deps: $(STAMP)

# Debian packages the tests use as real peers (ffmpeg, promtool); each fragment adds its own.
system-deps::
	@true

services-up:
	@scripts/ensure-services.sh

migrate: deps
	$(PY) -m services.common.migrations upgrade

run: deps system-deps
	$(PY) deploy/run_local.py

demo: deps
	$(PY) -m services.accounts.cli demo

lint: deps
	$(VENV)/bin/ruff check $(wildcard services tests bench deploy scripts examples)

test: deps system-deps services-up lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

test-fast: deps
	$(VENV)/bin/pytest -q -p no:cacheprovider -m "not integration"

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache

-include mk/*.mk

.PHONY: bench-services
bench-services: deps services-up
	$(PY) bench/services_idle.py
