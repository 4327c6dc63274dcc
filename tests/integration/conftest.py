"""Proxy fixtures: `pgshard serve` subprocesses in front of the session's harness clusters."""

from __future__ import annotations

import subprocess
import tempfile

import pytest

from pgshard.tls import write_self_signed
from tests.fixtures.proxy import ProxyProcess, env_without_pg

USERS = [
    {"name": "app", "password": "app-secret", "pool_size": 4},
    {"name": "many", "password": "many-secret", "pool_size": 10},
    {"name": "md5u", "password": "md5-secret", "auth": "md5"},
    {"name": "trustu", "auth": "trust"},
    {"name": "sess", "password": "sess-secret", "pool_mode": "session", "pool_size": 4},
]


def _shards(cluster, names=None):
    out = []
    for s in cluster.describe()["shards"]:
        if names is None or s["name"] in names:
            out.append({"name": s["name"], "primary": s["primary"], "replicas": s["replicas"]})
    return out


@pytest.fixture(scope="session")
def tls_pair():
    d = tempfile.mkdtemp(prefix="pgshard-tls-")
    return write_self_signed(__import__("pathlib").Path(d), ["127.0.0.1", "localhost"])


@pytest.fixture(scope="session")
def proxy2(pg_cluster, tls_pair):
    """pgshard over the 2-shard cluster, with TLS available and several kinds of users."""
    cert, key = tls_pair
    cfg = {"proxy": {"database": "app", "pool_size": 8, "query_wait_timeout": 20,
                     "max_client_conn": 400, "tls_cert": str(cert), "tls_key": str(key),
                     "max_message_size": 1024 * 1024},
           "users": USERS, "shards": _shards(pg_cluster)}
    with ProxyProcess(cfg) as p:
        yield p


@pytest.fixture(scope="session")
def proxy1(pg_cluster):
    """pgshard over shard0 only: a 1-shard cluster, where unhinted SQL works unchanged."""
    cfg = {"proxy": {"database": "app", "pool_size": 8}, "users": USERS,
           "shards": _shards(pg_cluster, {"shard0"})}
    with ProxyProcess(cfg) as p:
        yield p


@pytest.fixture(scope="session")
def pgbench_tables(pg_cluster):
    """pgbench's tables, initialised directly on every primary (DDL fan-out comes later)."""
    for s in pg_cluster.shards:
        subprocess.run(["pgbench", "-i", "-s", "1", "-q", s.primary.dsn], check=True,
                       capture_output=True, env=env_without_pg(), timeout=120)
    return pg_cluster
