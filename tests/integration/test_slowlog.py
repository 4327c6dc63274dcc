"""The slow-query log on a real `pgshard serve`: a statement over slow_query_ms gets one JSON
line with shard, user, kind and duration, a fast one none, and no line carries a bound
parameter. Needs the session's hook (ClientSession.server_idle calls proxy.slowlog.note)."""

from __future__ import annotations

import json
import time

import asyncpg
import pytest

from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import _shards

pytestmark = [pytest.mark.integration]


def slow_lines(log: str) -> list[dict]:
    out = []
    for line in log.splitlines():
        if '"slow_query"' in line:
            out.append(json.loads(line))
    return out


async def test_slow_statements_are_logged_without_parameters(pg_cluster):
    cfg = {"proxy": {"database": "app", "pool_size": 2, "slow_query_ms": 200},
           "users": [{"name": "app", "password": "app-secret"}],
           "shards": _shards(pg_cluster, {"shard0"})}
    with ProxyProcess(cfg) as proxy:
        c = await asyncpg.connect(proxy.dsn())
        assert await c.fetchval("SELECT 1") == 1
        await c.fetchval("SELECT $1::text FROM pg_sleep(0.3)", "s3cret-param")
        await c.close()
        deadline = time.monotonic() + 5
        while not slow_lines(proxy.log()) and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = slow_lines(proxy.log())
        assert len(lines) == 1, proxy.log()
        rec = lines[0]
        assert rec["shard"] == "shard0" and rec["user"] == "app" and rec["kind"] == "read"
        assert rec["duration_ms"] >= 300
        assert "s3cret-param" not in proxy.log()
