"""Clients waiting for a pooled server (more clients than pool_size, transaction pooling):
every one is served in turn, a wait past query_wait_timeout is a 53000, a client that leaves
while waiting gives its place back; no waiter is left behind (pool.waiters empty)."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest

from tests.fixtures.runtime import running_runtime, runtime_config

POOL = 2


@pytest.fixture(scope="module")
async def rt(pg_cluster):
    cfg = runtime_config(pg_cluster, proxy={"query_wait_timeout": 1},
                         users=[{"name": "app", "password": "app-secret", "pool_size": POOL}])
    async with running_runtime(cfg) as runtime:
        yield runtime


def _dsn(rt) -> str:
    return f"postgresql://app:app-secret@127.0.0.1:{rt.proxy.port}/app"


def _pools(rt, shard="shard0"):
    return [p for k, p in rt.proxy.pools.items() if k.shard == shard and k.role == "primary"]


@contextlib.asynccontextmanager
async def _every_server_held(rt):
    """POOL clients, each in a transaction holding one of shard0's pooled servers; leaving the
    block rolls them back (both servers free again) and closes them."""
    holders = [await asyncpg.connect(_dsn(rt)) for _ in range(POOL)]
    try:
        txs = [h.transaction() for h in holders]
        for h, tx in zip(holders, txs, strict=True):
            await tx.start()
            await h.execute("SELECT 1 /* shard: shard0 */")   # each holds a server
        yield
        for tx in txs:
            await tx.rollback()
    finally:
        for c in holders:
            await c.close()


async def _settled(rt):
    for _ in range(100):
        if all(not p.waiters and len(p.idle) == p.size for p in _pools(rt)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError([(len(p.waiters), len(p.idle), p.size) for p in _pools(rt)])


async def test_more_clients_than_servers_are_all_served(rt):
    conns = [await asyncpg.connect(_dsn(rt)) for _ in range(12)]
    try:
        async def work(c, i):
            return [await c.fetchval("SELECT $1::int FROM pg_sleep(0.002) /* shard: shard0 */",
                                     i * 100 + j) for j in range(15)]
        waited = sum(p.stats["waited"] for p in _pools(rt))
        got = await asyncio.gather(*(work(c, i) for i, c in enumerate(conns)))
        assert got == [[i * 100 + j for j in range(15)] for i in range(12)]
        assert sum(p.stats["waited"] for p in _pools(rt)) > waited   # they did wait
        assert all(p.size <= POOL for p in _pools(rt))
    finally:
        for c in conns:
            await c.close()
    await _settled(rt)


async def test_a_wait_past_query_wait_timeout_is_53000_and_leaves_no_waiter(rt):
    waiter = await asyncpg.connect(_dsn(rt))
    try:
        async with _every_server_held(rt):
            timeouts = sum(p.stats["timeouts"] for p in _pools(rt))
            with pytest.raises(asyncpg.PostgresError) as ei:
                await waiter.fetchval("SELECT 2 /* shard: shard0 */")
            assert ei.value.sqlstate == "53000" and "query_wait_timeout" in str(ei.value)
            assert sum(p.stats["timeouts"] for p in _pools(rt)) == timeouts + 1
            assert all(not p.waiters for p in _pools(rt))
        assert await waiter.fetchval("SELECT 3 /* shard: shard0 */") == 3
    finally:
        await waiter.close()
    await _settled(rt)


async def test_a_client_that_leaves_while_waiting_gives_its_place_back(rt):
    leaver = await asyncpg.connect(_dsn(rt))
    async with _every_server_held(rt):
        pending = asyncio.ensure_future(leaver.fetchval("SELECT 4 /* shard: shard0 */"))
        for _ in range(100):
            if any(p.waiters for p in _pools(rt)):
                break
            await asyncio.sleep(0.01)
        assert any(p.waiters for p in _pools(rt))
        leaver.terminate()   # gone while waiting for a server
        with pytest.raises(Exception):   # noqa: B017 - whatever the driver raises for it
            await pending
        for _ in range(100):
            if not any(p.waiters for p in _pools(rt)):
                break
            await asyncio.sleep(0.01)
        assert not any(p.waiters for p in _pools(rt))
    # Both servers are free for the next clients; nobody was handed a dead waiter's.
    others = [await asyncpg.connect(_dsn(rt)) for _ in range(POOL)]
    try:
        assert [await o.fetchval("SELECT 5 /* shard: shard0 */") for o in others] == [5, 5]
    finally:
        for o in others:
            await o.close()
    await _settled(rt)
