"""Replica reads through the proxy: eventual consistency lands on a healthy replica, a
lagging one is skipped, session consistency reads its own writes."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import USERS, _shards


@pytest.fixture(scope="module")
def proxy_replicas(pg_cluster):
    for s in pg_cluster.shards:
        s.primary.psql("DROP TABLE IF EXISTS rr; CREATE TABLE rr (id bigint PRIMARY KEY, v text)")
    users = USERS + [{"name": "reader", "password": "reader-secret",
                      "default_consistency": "eventual"}]
    cfg = {"proxy": {"database": "app", "pool_size": 4, "max_replica_lag": 1.0},
           "users": users, "shards": _shards(pg_cluster),
           "tables": [{"name": "rr", "shard_key": "id"}]}
    with ProxyProcess(cfg) as p:
        time.sleep(2.5)   # the replica monitor's first rounds
        yield p


async def _eventually_on_replica(conn, sql, *args, timeout: float = 15) -> None:
    """The read lands on a replica within timeout (the monitor polls every second; under
    load a replica may briefly count as lagging)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await conn.fetchval(sql, *args) is True:
            return
        await asyncio.sleep(0.3)
    pytest.fail(f"{sql!r} never ran on a replica")


async def test_eventual_reads_go_to_a_replica(proxy_replicas):
    c = await asyncpg.connect(proxy_replicas.dsn())
    try:
        await c.execute("INSERT INTO rr VALUES (1, 'one')")
        assert await c.fetchval("SELECT pg_is_in_recovery() FROM rr WHERE id = 1") is False
        # Hint per statement.
        got = await c.fetchval("SELECT pg_is_in_recovery() FROM rr WHERE id = $1 "
                               "/* consistency: eventual */", 1)
        # The replica may not have replayed the insert yet: then there is no row.
        assert got in (True, None)
        await _eventually_on_replica(
            c, "SELECT pg_is_in_recovery() FROM rr WHERE id = 1 /* consistency: eventual */")
        # Session setting; writes still go to the primary.
        await c.execute("SET pgshard.consistency = eventual")
        await _eventually_on_replica(c, "SELECT pg_is_in_recovery() FROM rr WHERE id = 1")
        await c.execute("UPDATE rr SET v = 'uno' WHERE id = 1")
        assert await c.fetchval("SELECT pg_is_in_recovery() FROM rr WHERE id = 1 FOR UPDATE") is False
    finally:
        await c.close()
    reader = await asyncpg.connect(proxy_replicas.dsn("reader", "reader-secret"))
    try:
        await _eventually_on_replica(reader, "SELECT pg_is_in_recovery()")
    finally:
        await reader.close()


async def test_lagging_replica_is_skipped(proxy_replicas, pg_cluster):
    c = await asyncpg.connect(proxy_replicas.dsn())
    await c.execute("SET pgshard.consistency = eventual")
    shard = pg_cluster.shards[0]
    replica = shard.replicas[0]
    try:
        replica.psql("SELECT pg_wal_replay_pause()")
        shard.primary.psql("CREATE TABLE IF NOT EXISTS lagger (x int); INSERT INTO lagger VALUES (1); "
                           "SELECT pg_switch_wal()")
        deadline = time.monotonic() + 15
        seen = None
        while time.monotonic() < deadline:
            shard.primary.psql("INSERT INTO lagger VALUES (2)")
            seen = await c.fetchval("SELECT pg_is_in_recovery() /* shard: shard0 */")
            if seen is False:
                break
            await asyncio.sleep(0.5)
        assert seen is False, "a replica with paused replay kept serving eventual reads"
    finally:
        replica.psql("SELECT pg_wal_replay_resume()")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if await c.fetchval("SELECT pg_is_in_recovery() /* shard: shard0 */"):
            break
        await asyncio.sleep(0.5)
    else:
        pytest.fail("the replica did not come back after replay resumed")
    await c.close()


async def test_session_consistency_reads_own_writes(proxy_replicas):
    c = await asyncpg.connect(proxy_replicas.dsn())
    try:
        await c.execute("SET pgshard.consistency = session")
        for i in range(100, 120):
            await c.execute("INSERT INTO rr VALUES ($1, $2)", i, f"v{i}")
            # Right after the write: whichever server answers has the row.
            assert await c.fetchval("SELECT v FROM rr WHERE id = $1", i) == f"v{i}"
        await _eventually_on_replica(c, "SELECT pg_is_in_recovery() FROM rr WHERE id = 100")
    finally:
        await c.close()


async def test_begin_read_only_runs_on_a_replica(proxy_replicas):
    c = await asyncpg.connect(proxy_replicas.dsn())
    try:
        await c.execute("SET pgshard.consistency = eventual")
        await _eventually_on_replica(c, "SELECT pg_is_in_recovery() FROM rr WHERE id = 1")
        async with c.transaction(readonly=True):
            assert await c.fetchval("SELECT pg_is_in_recovery() FROM rr WHERE id = 1") is True
            assert await c.fetchval("SELECT count(*) FROM rr WHERE id = 1") == 1
        # A write slipped into a read-only transaction gets PostgreSQL's own error.
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            async with c.transaction(readonly=True):
                await c.execute("INSERT INTO rr VALUES (999, 'no')")
        # Without READ ONLY a transaction stays on the primary.
        async with c.transaction():
            assert await c.fetchval("SELECT pg_is_in_recovery() FROM rr WHERE id = 1") is False
    finally:
        await c.close()
