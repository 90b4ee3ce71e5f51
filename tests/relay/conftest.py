"""Pytest fixtures of the relay tests; the helpers live in relay_harness (a plain module, no name clash
with the repository's root conftest)."""

from .relay_harness import dataplane  # noqa: F401  (fixture re-exported for pytest)
