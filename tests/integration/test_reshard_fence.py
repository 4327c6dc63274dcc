"""Routers honour resharding fences: a statement on a fenced key waits until the fence lifts
(others run meanwhile), fails with 40001 after fence_timeout, and the router acknowledges a
fence only once its transactions open on the fenced shard are over."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import mmh3
import pytest

from pgshard.control.fence_ack import FENCE_ACKS_PREFIX
from pgshard.ring.catalog import Fence
from tests.fixtures.clusters import temp_cluster
from tests.fixtures.runtime import running_runtime, runtime_config

pytestmark = pytest.mark.integration


def token(key) -> int:
    return mmh3.hash(str(key).encode(), seed=0, signed=False)


@pytest.fixture(scope="module")
def cluster():
    with temp_cluster(shards=2, replicas=0) as c:
        for s in c.shards:
            s.primary.psql("CREATE TABLE kv (id bigint PRIMARY KEY, v text)")
        yield c


async def fence_key(rt, key, job="testjob") -> int:
    t = token(key)
    cat = await rt.plane.catalog_ops.update(
        lambda c: c.evolve(fences=(*c.fences, Fence(t - 1, t, job))))
    while rt.proxy.catalog.version < cat.version:
        await asyncio.sleep(0.01)
    return cat.version


async def lift(rt):
    cat = await rt.plane.catalog_ops.update(lambda c: c.evolve(fences=()))
    while rt.proxy.catalog.version < cat.version:
        await asyncio.sleep(0.01)


async def acked(rt) -> int:
    kv = await rt.store.get(f"{FENCE_ACKS_PREFIX}/{rt.node_id}")
    return json.loads(kv.value)["version"] if kv is not None else 0


async def test_hold_release_timeout_and_ack(cluster):
    cfg = runtime_config(cluster, tables=[{"name": "kv", "shard_key": "id"}],
                         proxy={"fence_timeout": 1.5})
    async with running_runtime(cfg) as rt:
        dsn = f"postgresql://app:app-secret@127.0.0.1:{rt.proxy.port}/app"
        conn = await asyncpg.connect(dsn)
        other = await asyncpg.connect(dsn)
        for i in range(20):
            await conn.execute("INSERT INTO kv VALUES ($1, 'v0')", i)
        owner = rt.proxy.catalog.ring.owner(token(7))
        same = next(i for i in range(8, 20) if rt.proxy.catalog.ring.owner(token(i)) == owner)

        # A transaction open on the fenced key's shard delays the acknowledgement.
        await other.execute("BEGIN")
        await other.execute("UPDATE kv SET v = 'in-txn' WHERE id = $1", same)
        version = await fence_key(rt, 7)
        held = asyncio.create_task(conn.execute("UPDATE kv SET v = 'held' WHERE id = $1", 7))
        side = await asyncpg.connect(dsn)
        assert await side.fetchval("SELECT v FROM kv WHERE id = $1", same + 100) is None
        await side.execute("UPDATE kv SET v = 'free' WHERE id = $1", same + 1)   # not fenced
        await asyncio.sleep(0.3)
        assert not held.done()                       # waiting, not failed
        assert await acked(rt) < version             # the open transaction is not over
        # The open transaction may still write the fenced key: it is let through.
        await other.execute("UPDATE kv SET v = 'txn-wrote' WHERE id = $1", 7)
        await other.execute("COMMIT")
        for _ in range(300):
            if await acked(rt) >= version:
                break
            await asyncio.sleep(0.01)
        assert await acked(rt) >= version
        await lift(rt)
        assert await held == "UPDATE 1"
        assert await conn.fetchval("SELECT v FROM kv WHERE id = 7") == "held"

        # Held past fence_timeout: a clear, retryable error; the session goes on.
        await fence_key(rt, 7)
        with pytest.raises(asyncpg.SerializationError) as e:
            await conn.fetchval("SELECT v FROM kv WHERE id = $1", 7)
        assert "resharding job testjob" in str(e.value)
        assert e.value.sqlstate == "40001"
        with pytest.raises(asyncpg.SerializationError):   # the simple protocol too
            await conn.execute("UPDATE kv SET v = 'x' WHERE id = 7")
        assert await side.fetchval("SELECT count(*) FROM kv") == 20   # keyless reads run
        await lift(rt)
        assert await conn.fetchval("SELECT v FROM kv WHERE id = 7") == "held"
        text = rt.plane.metrics.render()[0].decode()
        holds = [line for line in text.splitlines()
                 if line.startswith("pgshard_fence_hold_seconds_count ")]
        assert holds and float(holds[0].split()[1]) >= 3
        for c in (conn, other, side):
            await c.close()


async def test_a_copy_split_waits_for_the_fence(cluster):
    """COPY … FROM STDIN split by key starts only once the fence lifts (its rows may fall in
    the fenced range: written to the old owner after the final catch-up they would be lost),
    and waiting past fence_timeout gives 40001."""
    cfg = runtime_config(cluster, tables=[{"name": "kv", "shard_key": "id"}],
                         proxy={"fence_timeout": 3})
    async with running_runtime(cfg) as rt:
        dsn = f"postgresql://app:app-secret@127.0.0.1:{rt.proxy.port}/app"
        conn = await asyncpg.connect(dsn)
        await conn.execute("DELETE FROM kv WHERE id >= 1000")
        await fence_key(rt, 7)
        rows = [(i, "copied") for i in range(1000, 1010)]
        copy = asyncio.create_task(conn.copy_records_to_table("kv", records=rows))
        await asyncio.sleep(0.5)
        assert not copy.done()   # held
        await lift(rt)
        assert await asyncio.wait_for(copy, 10) == "COPY 10"
        assert await conn.fetchval("SELECT count(*) FROM kv WHERE id >= 1000") == 10
        await fence_key(rt, 7)
        with pytest.raises(asyncpg.SerializationError):
            await conn.copy_records_to_table("kv", records=[(2000, "late")])
        await lift(rt)
        await conn.execute("DELETE FROM kv WHERE id >= 1000")
        await conn.close()
