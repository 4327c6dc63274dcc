"""The resharding runner with a second logical database, driven directly (no proxy): a job
cancelled after its copy leaves no slot, publication or copied row in either database;
a split then moves the rows of both databases, each row once, on its new owner. A shard
added while only the second database holds rows owns nothing until a job moves them."""

from __future__ import annotations

import asyncio
import tempfile

import asyncpg
import pytest

from pgshard.control.catalog_ops import CatalogService
from pgshard.control.catalog_sync import load_or_seed
from pgshard.reshard.runner import Connections, ReshardService
from pgshard.ring.catalog import Catalog, Shard
from pgshard.store import open_store
from tests.fixtures.clusters import temp_cluster
from tests.integration.test_reshard_runner import DDL, TABLES, placement, token

pytestmark = pytest.mark.integration

DBS = (None, "extra")


async def connect_all(desc, database):
    extra = {"database": database} if database else {}
    return {s["name"]: await asyncpg.connect(s["primary"], **extra) for s in desc}


async def seed(conns, cat: Catalog, n: int, offset: int) -> None:
    for name, c in conns.items():
        await c.execute("DROP TABLE IF EXISTS acct, tag")
        if name != "shard2":
            for d in DDL:
                await c.execute(d)
    for i in range(offset, offset + n):
        await conns[cat.ring.owner(token(i))].execute(
            "INSERT INTO acct VALUES ($1, $2, $3, $4)", i, f"o{i}", i, "x")
        name = f"k{i % 40}"
        await conns[cat.ring.owner(token(name))].execute(
            "INSERT INTO tag VALUES ($1, $2, $3)", name, i, f"v{i}")


async def leftovers(by_db) -> list:
    out = []
    for db, conns in by_db.items():
        for name, c in conns.items():
            out += [(db, name, r[0]) for r in await c.fetch(
                "SELECT slot_name FROM pg_replication_slots")]
            out += [(db, name, r[0]) for r in await c.fetch("SELECT pubname FROM pg_publication")]
            out += [(db, name, r[0]) for r in await c.fetch(
                "SELECT relname FROM pg_class WHERE relname LIKE 'pgshard_tok_%'")]
    return out


@pytest.fixture(scope="module")
def cluster():
    with temp_cluster(shards=3, replicas=0) as c:
        c.add_database("extra")
        yield c


def test_cancel_and_split_with_two_databases(cluster):
    async def body(cluster):
        desc = cluster.describe()["shards"]
        cat = Catalog.initial([Shard(s["name"], s["primary"]) for s in desc[:2]], TABLES,
                              vnodes_per_shard=32)
        cat = cat.evolve(shards=(*cat.shards, Shard(desc[2]["name"], desc[2]["primary"])))
        by_db = {db: await connect_all(desc, db) for db in DBS}
        for i, db in enumerate(DBS):
            await seed(by_db[db], cat, 150, i * 10_000)
        store = await open_store(f"sqlite:///{tempfile.mkdtemp(prefix='pgshard-meta-')}/m.db",
                                 cluster="t")
        await load_or_seed(store, cat)
        ops = CatalogService(store)
        svc = ReshardService(store, ops, lambda: True, databases=lambda: ("extra",))

        job = await svc.create("split", "shard0", "shard2")
        assert job.databases == ("extra",)
        async with Connections(cat) as cs:
            for _ in range(4):   # preconditions, schema, capture, copy
                job = await svc._step(cs, job)
        assert job.step == "catchup"
        assert set(job.copied) == {"shard0/acct", "shard0/tag", "shard0/extra/acct",
                                   "shard0/extra/tag"}
        for db in DBS:
            assert await by_db[db]["shard2"].fetchval("SELECT count(*) FROM acct") > 0
        await svc.cancel(job.id)
        assert (await svc.drive(job.id)).state == "cancelled"
        assert await leftovers(by_db) == []
        for db in DBS:
            for t in TABLES:
                assert await by_db[db]["shard2"].fetchval(f"SELECT count(*) FROM {t}") == 0
            await placement(by_db[db], cat)

        before = {db: await placement(by_db[db], cat) for db in DBS}
        job = await svc.create("split", "shard0", "shard2")
        job = await svc.drive(job.id)
        assert job.state == "done", job.error
        after_cat = (await ops.current())[0]
        assert after_cat.ring == job.new_ring
        for db in DBS:
            after = await placement(by_db[db], after_cat)
            assert {k: v[1] for k, v in after.items()} == {k: v[1] for k, v in before[db].items()}
            assert any(v[0] == "shard2" for v in after.values()), db
        assert await leftovers(by_db) == []
        await store.close()
        for conns in by_db.values():
            for c in conns.values():
                await c.close()

    asyncio.run(body(cluster))


def test_a_shard_added_while_only_another_database_holds_rows_owns_nothing(cluster):
    """Rows in a [[databases]] database count: the new shard gets no vnodes at once (that
    would strand them), a job has to move them."""
    async def body():
        desc = cluster.describe()["shards"]
        cat = Catalog.initial([Shard(s["name"], s["primary"]) for s in desc[:2]], TABLES,
                              vnodes_per_shard=32)
        main, extra = await connect_all(desc, None), await connect_all(desc, "extra")
        for conns in (main, extra):
            for c in conns.values():
                await c.execute("DROP TABLE IF EXISTS acct, tag")
                for d in DDL:
                    await c.execute(d)
        await extra["shard0"].execute("INSERT INTO acct VALUES (1, 'o', 1, 'x')")
        for with_extra, owns in ((False, True), (True, False)):
            store = await open_store(
                f"sqlite:///{tempfile.mkdtemp(prefix='pgshard-meta-')}/m.db", cluster="t")
            await load_or_seed(store, cat)
            ops = CatalogService(store, databases=(lambda: ("extra",)) if with_extra
                                 else tuple)
            change = await ops.add_shard("shard2", desc[2]["primary"], [])
            assert change.notes["owns_ranges"] is owns, change.notes
            if not owns:
                assert "acct (database extra)" in change.notes["message"]
            await store.close()
        for conns in (main, extra):
            for c in conns.values():
                await c.execute("DROP TABLE IF EXISTS acct, tag")
                await c.close()

    asyncio.run(body())
