"""Resharding with several logical databases ([[databases]]): one split moves the rows of the
moving ranges in every database, while clients write to both databases through the proxy
(inserts, updates and deletes on a bigint-keyed and a text-keyed table) and read a frozen
table with and without keys. Afterwards, in each database, every row exists exactly once,
on the shard the new ring names, equal to that database's ledger; fan-out counts were exact
at every moment; no client statement failed; no slot or publication is left. A database
with sharded tables on the source but missing on the target is refused first (409)."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import pytest

from pgshard.ring.catalog import Catalog
from tests.e2e.test_reshard_e2e import DDL, FROZEN, KEYS, TABLES, Load, run_job, token
from tests.fixtures.clusters import temp_cluster
from tests.fixtures.runtime import ADMIN_PASSWORD, Api, running_runtime, runtime_config

pytestmark = pytest.mark.integration

DATABASES = ("app", "extra")
SEED = 300


class SmallLoad(Load):
    """The e2e load with fewer rows to start from (each database is seeded through the
    proxy, a statement a row)."""

    async def seed(self, conn) -> None:
        for i in range(SEED):
            await conn.execute("INSERT INTO acct VALUES ($1, $2, $3)", i, f"o{i}", i)
            self.acct[i] = i
            await conn.execute("INSERT INTO tag VALUES ($1, $2, $3)", f"t{i % 60}", i, f"v{i}")
            self.tag[(f"t{i % 60}", i)] = f"v{i}"
        for i in range(FROZEN):
            await conn.execute("INSERT INTO frozen VALUES ($1, $2)", i, f"f{i}")


def _db(database: str) -> dict:
    return {} if database == "app" else {"database": database}


async def check_placement(cluster, catalog: Catalog, load: Load, database: str) -> None:
    """Every row of the database once, on its owner, equal to the ledger."""
    acct, tag, frozen = {}, {}, {}
    for s in cluster.describe()["shards"]:
        if s["name"] not in catalog.shard_names():
            continue
        conn = await asyncpg.connect(s["primary"], **_db(database))
        try:
            for table, into in (("acct", acct), ("tag", tag), ("frozen", frozen)):
                for r in await conn.fetch(f"SELECT * FROM {table}"):
                    assert catalog.ring.owner(token(r[KEYS[table]])) == s["name"], \
                        f"{database}: {table} {tuple(r)} on {s['name']}, not its owner"
                    pk = (r[0], r[1]) if table == "tag" else r[0]
                    assert pk not in into, f"{database}: {table} {pk} twice"
                    into[pk] = r
            assert await conn.fetchval("SELECT count(*) FROM pg_publication "
                                       "WHERE pubname LIKE 'pgshard_%'") == 0
        finally:
            await conn.close()
    assert {k: r["balance"] for k, r in acct.items()} == load.acct, database
    assert {k: r["v"] for k, r in tag.items()} == load.tag, database
    assert len(frozen) == FROZEN


async def test_split_moves_the_rows_of_every_database_under_load():
    with temp_cluster(shards=3, replicas=0) as cluster:
        cluster.add_database("extra")
        desc = cluster.describe()["shards"]
        for s in desc[:2]:
            for database in (*DATABASES, "only_here"):
                if database == "only_here":   # on the sources, not on the target
                    node = next(n.primary for n in cluster.shards if n.name == s["name"])
                    node.psql("CREATE DATABASE only_here")
                conn = await asyncpg.connect(s["primary"], **_db(database))
                for ddl in DDL:
                    await conn.execute(ddl)
                await conn.close()
        cfg = runtime_config(cluster, shards=[{"name": s["name"], "primary": s["primary"],
                                               "replicas": []} for s in desc[:2]],
                             tables=TABLES,
                             databases=[{"name": "extra"}, {"name": "only_here"}],
                             proxy={"pool_size": 6})
        async with running_runtime(cfg) as rt, aiohttp.ClientSession() as http:
            base = f"postgresql://app:app-secret@127.0.0.1:{rt.proxy.port}"
            loads = {db: SmallLoad([f"{base}/{db}"]) for db in DATABASES}
            for db, load in loads.items():
                conn = await asyncpg.connect(f"{base}/{db}")
                await load.seed(conn)
                await conn.close()
                load.next_id = 20_000_000 if db == "extra" else 10_000_000
            api = Api(rt.api_url, http)
            tok = await api.login("admin", ADMIN_PASSWORD)
            status, body, _ = await api.request("POST", "/api/v1/shards", token=tok, json={
                "name": "shard2", "primary": desc[2]["primary"], "replicas": []})
            assert status == 201, body
            # A database with sharded tables on the source but missing on the target: refused.
            status, problem, _ = await api.request("POST", "/api/v1/jobs", token=tok, json={
                "kind": "split", "source": "shard0", "target": "shard2"})
            assert status == 409, problem
            assert 'database "only_here"' in problem["detail"] and "shard2" in problem["detail"]
            # Gone from the sources too: nothing of it to move, the job goes ahead.
            for sh in cluster.shards[:2]:
                sh.primary.psql("DROP DATABASE only_here")
            tasks = [asyncio.create_task(load.writer(w)) for load in loads.values()
                     for w in range(2)]
            tasks += [asyncio.create_task(load.reader(0)) for load in loads.values()]
            await asyncio.sleep(0.5)
            try:
                job = await run_job(api, tok, {"kind": "split", "source": "shard0",
                                               "target": "shard2"}, rt)
                await asyncio.sleep(0.3)
            finally:
                for load in loads.values():
                    load.stop.set()
                await asyncio.gather(*tasks)
            assert job["state"] == "done", job
            assert job["databases"] == ["extra", "only_here"]
            catalog = rt.proxy.catalog
            assert catalog.ring.ranges("shard2")
            for db, load in loads.items():
                assert not load.errors, (db, load.errors[:5])
                assert load.writes > 20 and load.keyed_reads > 5, db
                assert set(load.counts) == {FROZEN}, (db, sorted(set(load.counts)))
                await check_placement(cluster, catalog, load, db)
            for s in desc[:3]:
                conn = await asyncpg.connect(s["primary"])
                try:
                    assert await conn.fetchval("SELECT count(*) FROM pg_replication_slots "
                                               "WHERE slot_name LIKE 'pgshard_%'") == 0
                finally:
                    await conn.close()
