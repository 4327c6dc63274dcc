"""/metrics after real traffic through the proxy, parsed by prometheus-client's own parser."""

from __future__ import annotations

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.runtime import running_runtime, runtime_config


async def scrape(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(families: dict, family: str, name: str | None = None, **labels) -> list:
    return [s for s in families[family].samples
            if (name is None or s.name == name)
            and all(s.labels.get(k) == v for k, v in labels.items())]


async def test_metrics_after_traffic(pg_cluster):
    async with running_runtime(runtime_config(pg_cluster)) as rt, \
            aiohttp.ClientSession() as session:
        conns = [await asyncpg.connect(host="127.0.0.1", port=rt.proxy.port, user="app",
                                       password="app-secret", database="app")
                 for _ in range(3)]
        try:
            for conn in conns:
                for i in range(5):
                    assert await conn.fetchval(f"SELECT {i} /* shard: shard0 */") == i
            assert await conns[0].fetchval("SELECT 1 /* shard: shard1 */") == 1
            # Errors the proxy itself raises: an unknown shard (twice), a write without a key.
            for _ in range(2):
                with pytest.raises(asyncpg.PostgresError):
                    await conns[0].fetchval("SELECT 1 /* shard: nosuch */")
            with pytest.raises(asyncpg.PostgresError):
                await conns[1].execute("DELETE FROM nowhere")
            fams = await scrape(session, rt.api_url)

            assert samples(fams, "pgshard_client_connections")[0].value == 3
            assert samples(fams, "pgshard_client_connections_accepted")[0].value >= 3
            assert samples(fams, "pgshard_catalog_version")[0].value == rt.proxy.catalog.version
            assert samples(fams, "pgshard_store_reachable")[0].value == 1
            assert samples(fams, "pgshard_manager_leader")[0].value == 1
            pool = samples(fams, "pgshard_pool_servers", shard="shard0", role="primary")
            assert pool and pool[0].value >= 1
            assert samples(fams, "pgshard_pool_max_servers", shard="shard0")[0].value == 4
            assert samples(fams, "pgshard_pool_acquired", shard="shard0")[0].value >= 15
            assert samples(fams, "pgshard_pool_idle", shard="shard1")[0].value >= 0
            assert samples(fams, "pgshard_pool_waiters", shard="shard0")[0].value == 0
            errors = samples(fams, "pgshard_errors", "pgshard_errors_total", sqlstate="42704")
            assert errors and errors[0].value == 2
            assert samples(fams, "pgshard_errors", "pgshard_errors_total", sqlstate="0A000")
            shard0 = samples(fams, "pgshard_queries", "pgshard_queries_total", shard="shard0",
                             role="primary")
            assert sum(s.value for s in shard0) >= 15   # 3 clients x 5 reads, counted by the proxy
            hist = samples(fams, "pgshard_query_duration_seconds",
                           "pgshard_query_duration_seconds_count", shard="shard0")
            assert sum(s.value for s in hist) >= 1
            buckets = samples(fams, "pgshard_query_duration_seconds",
                              "pgshard_query_duration_seconds_bucket", kind="read")
            assert any(s.labels["le"] == "+Inf" for s in buckets)
        finally:
            for conn in conns:
                await conn.close()
        fams = await scrape(session, rt.api_url)
        assert samples(fams, "pgshard_client_connections")[0].value == 0
        http = samples(fams, "pgshard_http_requests", "pgshard_http_requests_total",
                       route="/metrics", method="GET", status="200")
        assert http and http[0].value >= 1
