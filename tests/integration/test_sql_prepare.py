"""SQL-level PREPARE / EXECUTE across shards, on real servers: an EXECUTE goes to the shard
its key argument names (its PREPARE is made there too, and the server stays the client's),
so rows land on their owners and keyed reads find them; a keyless EXECUTE on a sharded
table is refused with a hint; DEALLOCATE and a new PREPARE under the same name take effect
on every shard; the next client on the same servers sees none of it."""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest

from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import _shards
from tests.integration.test_txn_integrity import _keys

TABLE = "sqlprep_items"
ROWS = "sqlprep_rows"   # used by one test only: the proxy knows nothing of its columns
DDL = (f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, v text); "
       f"CREATE TABLE IF NOT EXISTS {ROWS} (id bigint PRIMARY KEY, v text)")
ONE = {"name": "one", "password": "one-secret", "pool_size": 1}


@pytest.fixture(scope="module")
def env(pg_cluster):
    for s in pg_cluster.shards:
        s.primary.psql(DDL)
        s.primary.psql(f"TRUNCATE {TABLE}, {ROWS}")
    keys = _keys([s.name for s in pg_cluster.shards], start=100)
    cfg = {"proxy": {"database": "app", "pool_mode": "transaction"}, "users": [ONE],
           "shards": _shards(pg_cluster), "tables": [{"name": TABLE, "shard_key": "id"},
                                                 {"name": ROWS, "shard_key": "id"}]}
    with ProxyProcess(cfg) as p:
        yield p, pg_cluster, keys


def _on(cluster, shard: str, sql: str) -> str:
    return next(s.primary for s in cluster.shards if s.name == shard).psql(sql)


async def test_execute_goes_to_the_owner_of_its_key(env):
    proxy, cluster, keys = env
    a, b = keys["shard0"][0], keys["shard1"][0]
    c = await asyncpg.connect(proxy.dsn("one", "one-secret"))
    try:
        await c.execute(f"PREPARE ins(bigint, text) AS INSERT INTO {TABLE} VALUES ($1, $2)")
        await c.execute(f"PREPARE sel(bigint) AS SELECT v FROM {TABLE} WHERE id = $1")
        await c.execute(f"EXECUTE ins({a}, 'on zero')")
        await c.execute(f"EXECUTE ins('{b}'::bigint, 'on one')")
        assert await c.fetchval(f"EXECUTE sel({a})") == "on zero"   # extended protocol
        assert await c.fetchval(f"EXECUTE sel({b})") == "on one"
        await c.execute(f"PREPARE cnt AS SELECT count(*) FROM {TABLE}")
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="no shard key"):
            await c.execute("EXECUTE cnt")   # one shard's count would be a wrong answer
        await c.execute("DEALLOCATE sel")
        await c.execute(f"PREPARE sel(bigint) AS SELECT v || '!' FROM {TABLE} WHERE id = $1")
        assert await c.fetchval(f"EXECUTE sel({b})") == "on one!"
        assert await c.fetchval(f"EXECUTE sel({a})") == "on zero!"
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="must be a constant"):
            await c.execute(f"EXECUTE sel({a} + 0)")
    finally:
        await c.close()
    assert _on(cluster, "shard0", f"SELECT string_agg(id::text, ',') FROM {TABLE}") == str(a)
    assert _on(cluster, "shard1", f"SELECT string_agg(id::text, ',') FROM {TABLE}") == str(b)
    # the servers were reset before anyone else got them (a pool of one server per shard)
    with psycopg.connect(proxy.dsn("one", "one-secret"), autocommit=True) as nxt:
        for shard in ("shard0", "shard1"):
            assert nxt.execute(f"/* shard: {shard} */ SELECT count(*) FROM "
                               "pg_prepared_statements WHERE from_sql").fetchone()[0] == 0



async def test_describing_an_execute_first_learns_its_tables_columns(env):
    """asyncpg describes `EXECUTE ins(…)` (Parse, Describe, Flush) before it runs it; where
    it goes depends on the key in its INSERT without a column list, so the proxy first
    learns the table's column order, then sends the described unit (none of it lost)."""
    proxy, cluster, keys = env
    a, b = keys["shard0"][3], keys["shard1"][3]
    c = await asyncpg.connect(proxy.dsn("one", "one-secret"))
    try:
        await c.execute(f"PREPARE ins(bigint, text) AS INSERT INTO {ROWS} VALUES ($1, $2) "
                        "RETURNING v")
        assert await asyncio.wait_for(c.fetchval(f"EXECUTE ins({b}, 'one')"), 10) == "one"
        assert await asyncio.wait_for(c.fetchval(f"EXECUTE ins({a}, 'zero')"), 10) == "zero"
    finally:
        await c.close()
    assert _on(cluster, "shard0", f"SELECT string_agg(id::text, ',') FROM {ROWS}") == str(a)
    assert _on(cluster, "shard1", f"SELECT string_agg(id::text, ',') FROM {ROWS}") == str(b)

def test_psql_prepare_execute_in_a_transaction(env):
    proxy, cluster, keys = env
    a, b = keys["shard0"][1], keys["shard1"][1]
    with psycopg.connect(proxy.dsn("one", "one-secret"), autocommit=True) as c:
        c.execute("BEGIN")
        c.execute(f"PREPARE up(bigint) AS UPDATE {TABLE} SET v = 'x' WHERE id = $1")
        c.execute(f"INSERT INTO {TABLE} VALUES ({a}, 'a'), ({b}, 'b')")
        c.execute(f"EXECUTE up({a})")
        c.execute(f"EXECUTE up({b})")
        c.execute("COMMIT")
    assert _on(cluster, "shard0", f"SELECT v FROM {TABLE} WHERE id = {a}") == "x"
    assert _on(cluster, "shard1", f"SELECT v FROM {TABLE} WHERE id = {b}") == "x"
