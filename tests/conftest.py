"""Shared fixtures: real PostgreSQL and Redis (tests/fixtures/db.py), real chains
(tests/fixtures/chains.py: anvil over JSON-RPC and an in-process eth-tester chain), the engine
harness (tests/fixtures/indexing.py), a fault-injecting JSON-RPC proxy
(tests/fixtures/rpc_proxy.py) and a private redis-server to stop and restart
(tests/fixtures/redis_server.py)."""

pytest_plugins = [
    "tests.fixtures.db",
    "tests.fixtures.chains",
    "tests.fixtures.indexing",
    "tests.fixtures.rpc_proxy",
    "tests.fixtures.redis_server",
]
