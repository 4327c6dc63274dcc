"""DDL on every shard, in and out of transactions; multi-row INSERT split per shard."""

from __future__ import annotations

import psycopg
import pytest

from pgshard.ring import Ring, hashing
from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import USERS, _shards


@pytest.fixture(scope="module")
def proxy_tables(pg_cluster):
    cfg = {"proxy": {"database": "app", "pool_size": 4},
           "users": USERS, "shards": _shards(pg_cluster),
           "tables": [{"name": "ddl_t", "shard_key": "id"}, {"name": "ddl_x", "shard_key": "id"}]}
    with ProxyProcess(cfg) as p:
        yield p


def _exists(pg_cluster, table: str) -> list[bool]:
    return [s.primary.psql(f"SELECT to_regclass('public.{table}') IS NOT NULL") == "t"
            for s in pg_cluster.shards]


def test_ddl_outside_a_transaction_reaches_every_shard(proxy_tables, pg_cluster):
    with psycopg.connect(proxy_tables.dsn(), autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS ddl_t")
        c.execute("CREATE TABLE ddl_t (id bigint PRIMARY KEY, v text)")
        assert _exists(pg_cluster, "ddl_t") == [True, True]
        # A failure on the shards is reported with the shard's name.
        with pytest.raises(psycopg.errors.DuplicateTable, match="shard"):
            c.execute("CREATE TABLE ddl_t (id bigint PRIMARY KEY)")
        # Multi-row INSERT split per shard, RETURNING rows from every shard.
        cur = c.execute("INSERT INTO ddl_t (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c'), "
                        "(4, 'd'), (5, 'e'), (6, 'f') RETURNING id")
        assert cur.statusmessage == "INSERT 0 6"
        assert sorted(r[0] for r in cur.fetchall()) == [1, 2, 3, 4, 5, 6]
    ring = Ring.build([s.name for s in pg_cluster.shards])
    for s in pg_cluster.shards:
        ids = {int(x) for x in s.primary.psql("SELECT id FROM ddl_t").split()}
        assert ids == {i for i in range(1, 7) if ring.owner(hashing.token(str(i).encode())) == s.name}


def test_ddl_inside_a_transaction_commits_or_rolls_back_everywhere(proxy_tables, pg_cluster):
    with psycopg.connect(proxy_tables.dsn()) as c:       # not autocommit: psycopg sends BEGIN
        c.execute("DROP TABLE IF EXISTS ddl_x")
        c.commit()
        c.execute("CREATE TABLE ddl_x (id bigint PRIMARY KEY, v text)")
        c.execute("INSERT INTO ddl_x VALUES (%s, %s)", (10, "ten"))
        c.execute("INSERT INTO ddl_x VALUES (11, 'eleven')")
        assert c.execute("SELECT count(*) FROM ddl_x").fetchone() == (2,)
        assert _exists(pg_cluster, "ddl_x") == [False, False]   # not committed yet
        c.commit()
        assert _exists(pg_cluster, "ddl_x") == [True, True]
        assert c.execute("SELECT count(*) FROM ddl_x").fetchone() == (2,)
        c.commit()
        c.execute("ALTER TABLE ddl_x ADD COLUMN extra int")
        c.rollback()
        cols = [s.primary.psql("SELECT count(*) FROM information_schema.columns "
                               "WHERE table_name = 'ddl_x'") for s in pg_cluster.shards]
        assert cols == ["2", "2"]
        # An error on a shard fails the whole transaction, as on one database.
        c.execute("ALTER TABLE ddl_x ADD COLUMN extra int")
        with pytest.raises(psycopg.errors.DuplicateColumn):
            c.execute("ALTER TABLE ddl_x ADD COLUMN extra int")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            c.execute("SELECT 1")
        c.rollback()
        cols = [s.primary.psql("SELECT count(*) FROM information_schema.columns "
                               "WHERE table_name = 'ddl_x'") for s in pg_cluster.shards]
        assert cols == ["2", "2"]
