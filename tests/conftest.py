"""Shared fixtures: real PostgreSQL and Redis (tests/fixtures/db.py), real chains
(tests/fixtures/chains.py: anvil over JSON-RPC and an in-process eth-tester chain)."""

pytest_plugins = ["tests.fixtures.db", "tests.fixtures.chains"]
