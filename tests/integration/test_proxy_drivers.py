"""asyncpg and psycopg 3 through the proxy: prepared statements, pipelines, COPY, cancel."""

from __future__ import annotations

import asyncio
import io

import asyncpg
import psycopg
import pytest

from pgshard.ring import Ring, hashing


@pytest.fixture(scope="module")
def items(pg_cluster):
    for s in pg_cluster.shards:
        s.primary.psql("DROP TABLE IF EXISTS items; "
                       "CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int)")
    return Ring.build([s.name for s in pg_cluster.shards])


def owner(ring, key) -> str:
    return ring.owner(hashing.token(hashing.canonical_key(key)))


async def test_asyncpg_prepared_and_executemany(proxy2, items, pg_cluster):
    conn = await asyncpg.connect(proxy2.dsn())
    try:
        # asyncpg prepares every statement (named, binary parameters).
        ins = "INSERT INTO items VALUES ($1, $2, $3) /* shard_key_param: 1 */"
        for i in range(1, 41):
            await conn.execute(ins, i, f"n{i}", i * 10)
        # executemany is one implicit transaction: rows for one shard go in one call ...
        by_shard: dict[str, list] = {}
        for i in range(41, 81):
            by_shard.setdefault(owner(items, i), []).append((i, f"n{i}", i))
        for rows in by_shard.values():
            await conn.executemany(ins, rows)
        # ... and a call spanning shards is one transaction on both (two-phase commit): a
        # row that fails on one shard leaves nothing on the other.
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.executemany(ins, [(i, "x", 0) for i in range(81, 101)] + [(1, "dup", 0)])
        assert await conn.fetchval("SELECT count(*) FROM items WHERE id > 80 /* shard: shard0 */") == 0
        assert await conn.fetchval("SELECT count(*) FROM items WHERE id > 80 /* shard: shard1 */") == 0
        stmt = await conn.prepare("SELECT name, qty FROM items WHERE id = $1 /* shard_key_param: 1 */")
        for i in (1, 17, 44, 80):
            row = await stmt.fetchrow(i)
            assert row["name"] == f"n{i}"
        rows = await conn.fetch("SELECT id FROM items WHERE id = $1 /* shard_key_param: 1 */", 33)
        assert [r["id"] for r in rows] == [33]
    finally:
        await conn.close()
    # Each row sits on the shard the ring names, and only there.
    for s in pg_cluster.shards:
        ids = {int(x) for x in s.primary.psql("SELECT id FROM items WHERE id <= 80").split()}
        assert ids == {i for i in range(1, 81) if owner(items, i) == s.name}


async def test_asyncpg_transaction_and_rollback(proxy2, items):
    conn = await asyncpg.connect(proxy2.dsn())
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL pgshard.shard_key = '500'")
            await conn.execute("INSERT INTO items VALUES (500, 'tx', 1)")
            await conn.execute("UPDATE items SET qty = qty + 1 WHERE id = 500")
        assert await conn.fetchval("SELECT qty FROM items WHERE id = $1 /* shard_key_param: 1 */", 500) == 2
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute("INSERT INTO items VALUES (501, 'gone', 1) /* shard_key: 501 */")
                raise RuntimeError("roll back")
        assert await conn.fetchval("SELECT count(*) FROM items WHERE id = 501 /* shard_key: 501 */") == 0
    finally:
        await conn.close()


async def test_asyncpg_cancel(proxy2, items):
    conn = await asyncpg.connect(proxy2.dsn())
    try:
        task = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(30) /* shard: shard0 */"))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # asyncpg cancelled the query with a CancelRequest through the proxy: the
        # connection is usable again at once, not after 30 seconds.
        assert await asyncio.wait_for(conn.fetchval("SELECT 1 /* shard: shard0 */"), 5) == 1
        # A statement timeout: asyncpg cancels the query on the server and carries on.
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT pg_sleep(30) /* shard: shard1 */", timeout=0.5)
        assert await asyncio.wait_for(conn.fetchval("SELECT 2 /* shard: shard1 */"), 5) == 2
    finally:
        await conn.close()


async def test_asyncpg_many_clients_small_pool(proxy2, items):
    """200 concurrent clients over a pool of 10 (user "many")."""
    async def one(i):
        c = await asyncpg.connect(proxy2.dsn("many", "many-secret"))
        try:
            for j in range(3):
                k = 10_000 + i * 10 + j
                await c.execute("INSERT INTO items VALUES ($1, 'm', $2) /* shard_key_param: 1 */", k, j)
            return await c.fetchval("SELECT qty FROM items WHERE id = $1 /* shard_key_param: 1 */",
                                    10_000 + i * 10 + 2)
        finally:
            await c.close()

    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert results == [2] * 200


def test_psycopg_prepare_pipeline_copy(proxy2, items, pg_cluster):
    with psycopg.connect(proxy2.dsn(), autocommit=True) as conn:
        # Server-side prepared statements (prepare=True) through transaction pooling.
        for i in range(900, 920):
            conn.execute("INSERT INTO items VALUES (%s, %s, %s) /* shard_key_param: 1 */",
                         (i, f"p{i}", i), prepare=True)
        cur = conn.execute("SELECT name FROM items WHERE id = %s /* shard_key_param: 1 */", (905,),
                           prepare=True)
        assert cur.fetchone() == ("p905",)
        # Pipeline mode: statements for one shard share a Sync; a sync() between
        # statements lets the next one go to another shard.
        same = [i for i in range(900, 920) if owner(items, i) == owner(items, 900)]
        with conn.pipeline():
            curs = [conn.execute("SELECT qty FROM items WHERE id = %s /* shard_key_param: 1 */",
                                 (i,)) for i in same]
        assert [c.fetchone()[0] for c in curs] == same
        with conn.pipeline() as p:
            curs = []
            for i in range(900, 920):
                curs.append(conn.execute(
                    "SELECT qty FROM items WHERE id = %s /* shard_key_param: 1 */", (i,)))
                p.sync()
        assert [c.fetchone()[0] for c in curs] == list(range(900, 920))
        # One implicit transaction spanning shards: all or nothing on both.
        with pytest.raises(psycopg.errors.UniqueViolation):
            with conn.pipeline():
                for i in [*range(950, 970), 900]:
                    conn.execute("INSERT INTO items VALUES (%s, 'x', 0) /* shard_key_param: 1 */", (i,))
        for s in pg_cluster.shards:
            assert s.primary.psql("SELECT count(*) FROM items WHERE id BETWEEN 950 AND 969").strip() == "0"
        with conn.pipeline():
            for i in range(950, 970):
                conn.execute("INSERT INTO items VALUES (%s, 'x', 0) /* shard_key_param: 1 */", (i,))
        for s in pg_cluster.shards:
            assert s.primary.psql("SELECT count(*) FROM items WHERE id BETWEEN 950 AND 969").strip() \
                == str(sum(1 for i in range(950, 970) if owner(items, i) == s.name))
        # COPY in and out, pinned to one shard.
        with conn.cursor() as c:
            with c.copy("COPY items (id, name, qty) FROM STDIN /* shard: shard1 */") as cp:
                for i in range(3000, 3500):
                    cp.write_row((i, f"c{i}", i % 7))
            buf = io.BytesIO()
            with c.copy("COPY (SELECT id FROM items WHERE id >= 3000 AND id < 3500 ORDER BY id) "
                        "TO STDOUT /* shard: shard1 */") as cp:
                for data in cp:
                    buf.write(data)
        assert buf.getvalue().decode().split() == [str(i) for i in range(3000, 3500)]
    # psycopg transaction (non-autocommit) with a hinted statement.
    with psycopg.connect(proxy2.dsn()) as conn:
        conn.execute("INSERT INTO items VALUES (777, 'txn', 1) /* shard_key: 777 */")
        conn.commit()
        assert conn.execute("SELECT name FROM items WHERE id = 777 /* shard_key: 777 */").fetchone() == ("txn",)
    shard = owner(items, 777)
    node = next(s.primary for s in pg_cluster.shards if s.name == shard)
    assert node.psql("SELECT name FROM items WHERE id = 777").strip() == "txn"


def test_psycopg_binary_param_key_same_shard(proxy2, items, pg_cluster):
    """The same key as text and as binary parameter routes to the same shard."""
    with psycopg.connect(proxy2.dsn(), autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (%b, 'bin', 1) /* shard_key_param: 1 */", (4242,))
        row = conn.execute("SELECT name FROM items WHERE id = %t /* shard_key_param: 1 */", (4242,)).fetchone()
        assert row == ("bin",)
        row = conn.execute("SELECT name FROM items WHERE id = 4242 /* shard_key: 4242 */").fetchone()
        assert row == ("bin",)
