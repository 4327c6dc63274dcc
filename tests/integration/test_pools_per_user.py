"""A user's own pool_size gives that user a pool of its own (as PgBouncer pools per user),
however many other users log in to the shards with the same server credentials."""

from __future__ import annotations

import asyncio

import asyncpg

from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import _shards


async def test_per_user_pool_sizes_are_honoured(pg_cluster):
    users = [{"name": "small", "password": "small-secret", "pool_size": 1},
             {"name": "wide", "password": "wide-secret", "pool_size": 3}]
    cfg = {"proxy": {"database": "app", "pool_size": 2, "query_wait_timeout": 3},
           "users": users, "shards": _shards(pg_cluster, {"shard0"})}
    with ProxyProcess(cfg) as proxy:
        small = await asyncpg.connect(proxy.dsn("small", "small-secret"))
        wide = [await asyncpg.connect(proxy.dsn("wide", "wide-secret")) for _ in range(3)]
        try:
            assert await small.fetchval("SELECT 1") == 1       # the first pool made
            # Three transactions of `wide` at once: its pool of 3, not `small`'s pool of 1.
            pids = set()
            for c in wide:
                await c.execute("BEGIN")
                pids.add(await asyncio.wait_for(c.fetchval("SELECT pg_backend_pid()"), 10))
            assert len(pids) == 3
            # ... and `small` still has its own server while they hold theirs.
            assert await asyncio.wait_for(small.fetchval("SELECT pg_backend_pid()"), 10) not in pids
            # A fourth `wide` transaction waits for one of the three, not for `small`'s.
            extra = await asyncpg.connect(proxy.dsn("wide", "wide-secret"))
            try:
                await extra.execute("BEGIN")
                waiting = asyncio.ensure_future(extra.fetchval("SELECT pg_backend_pid()"))
                await asyncio.sleep(0.5)
                assert not waiting.done()
                await wide[0].execute("COMMIT")
                assert await asyncio.wait_for(waiting, 10) in pids
                await extra.execute("COMMIT")
            finally:
                await extra.close()
        finally:
            for c in (small, *wide):
                await c.close()
