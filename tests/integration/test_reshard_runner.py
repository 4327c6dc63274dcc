"""The resharding runner on real PostgreSQL servers, driven directly (no proxy): split into an
empty shard and merge back, cancel mid-copy, refusals. Rows are checked on every shard
against the ring the catalog names afterwards."""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile

import asyncpg
import mmh3
import pytest

from pgshard.control.catalog_ops import CatalogService
from pgshard.control.catalog_sync import load_or_seed
from pgshard.reshard import tables, verify
from pgshard.reshard.job import JobError
from pgshard.reshard.runner import Connections, ReshardService
from pgshard.ring.catalog import Catalog, Shard
from pgshard.store import open_store
from tests.fixtures.clusters import temp_cluster

pytestmark = pytest.mark.integration

DDL = [
    "CREATE TABLE IF NOT EXISTS acct (id bigint PRIMARY KEY, owner text NOT NULL, "
    "balance numeric DEFAULT 0, note text)",
    "CREATE TABLE IF NOT EXISTS tag (name text, n int, v text, PRIMARY KEY (name, n))",
]
TABLES = {"acct": "id", "tag": "name"}


def token(key) -> int:
    return mmh3.hash(str(key).encode(), seed=0, signed=False)


@pytest.fixture(scope="module")
def cluster():
    with temp_cluster(shards=3, replicas=0) as c:
        yield c


def run(coro):
    return asyncio.run(coro)


async def setup(cluster, n=600):
    """shard0 and shard1 in the catalog with rows placed by the ring; shard2 empty."""
    desc = cluster.describe()["shards"]
    cat = Catalog.initial([Shard(s["name"], s["primary"]) for s in desc[:2]], TABLES,
                          vnodes_per_shard=32)
    cat = cat.evolve(shards=(*cat.shards, Shard(desc[2]["name"], desc[2]["primary"])))
    conns = {s["name"]: await asyncpg.connect(s["primary"]) for s in desc}
    for name, c in conns.items():
        await c.execute("DROP TABLE IF EXISTS acct, tag")
        if name != "shard2":
            for d in DDL:
                await c.execute(d)
    for i in range(n):
        owner = cat.ring.owner(token(i))
        await conns[owner].execute("INSERT INTO acct VALUES ($1, $2, $3, $4)", i, f"o{i}",
                                   i * 1.5, "x" * (i % 7))
        tname = f"k{i % 50}"
        await conns[cat.ring.owner(token(tname))].execute(
            "INSERT INTO tag VALUES ($1, $2, $3)", tname, i, f"v{i}")
    store = await open_store(f"sqlite:///{tempfile.mkdtemp(prefix='pgshard-meta-')}/m.db",
                             cluster="t")
    await load_or_seed(store, cat)
    return store, conns


async def placement(conns, catalog: Catalog):
    """Every row on the shard the ring names, exactly once; returns all rows."""
    seen = {}
    for name, c in conns.items():
        for table, key in TABLES.items():
            if not await c.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
                continue
            for r in await c.fetch(f"SELECT * FROM {table}"):
                pk = (table, r[0]) if table == "acct" else (table, r[0], r[1])
                assert pk not in seen, f"{pk} on {name} and {seen[pk][0]}"
                assert catalog.ring.owner(token(r[key])) == name, f"{pk} misplaced on {name}"
                seen[pk] = (name, tuple(r))
    return seen


async def slots_and_pubs(conns):
    """Every slot, publication and job index left on the shards."""
    out = []
    for name, c in conns.items():
        out += [(name, r[0]) for r in await c.fetch(
            "SELECT relname FROM pg_class WHERE relname LIKE 'pgshard_tok_%'")]
        out += [(name, r[0]) for r in await c.fetch("SELECT slot_name FROM pg_replication_slots")]
        out += [(name, r[0]) for r in await c.fetch("SELECT pubname FROM pg_publication")]
    return out


def test_split_then_merge_moves_every_row_once(cluster):
    async def body():
        store, conns = await setup(cluster)
        ops = CatalogService(store)
        svc = ReshardService(store, ops, lambda: True)
        before = await placement(conns, (await ops.current())[0])

        job = await svc.create("split", "shard0", "shard2")
        # Writes between creation and the copy, and during catch-up, are applied too.
        await conns["shard0"].execute("UPDATE acct SET balance = balance + 1000")
        job = await svc.drive(job.id)
        assert job.state == "done", job.error
        cat = (await ops.current())[0]
        assert "shard2" in cat.ring.shards() and not cat.fences
        after = await placement(conns, cat)
        assert after.keys() == before.keys()
        moved = [k for k in after if after[k][0] == "shard2"]
        assert moved and all(before[k][0] == "shard0" for k in moved)
        assert job.rows_copied >= len(moved)
        assert job.write_pause_ms is not None
        assert await slots_and_pubs(conns) == []

        job = await svc.create("merge", "shard2", "shard0")
        job = await svc.drive(job.id)
        assert job.state == "done", job.error
        cat = (await ops.current())[0]
        assert "shard2" not in cat.shard_names()
        final = await placement(conns, cat)
        assert final.keys() == before.keys()
        assert {v[0] for v in final.values()} == {"shard0", "shard1"}
        for k, (_, row) in final.items():
            assert row == after[k][1]
        assert await slots_and_pubs(conns) == []
        await store.close()
        for c in conns.values():
            await c.close()

    run(body())


def test_rebalance_takes_ranges_from_every_shard(cluster):
    async def body():
        store, conns = await setup(cluster, n=400)
        ops = CatalogService(store)
        svc = ReshardService(store, ops, lambda: True)
        before = await placement(conns, (await ops.current())[0])
        job = await svc.create("rebalance", None, "shard2")
        assert set(job.sources) == {"shard0", "shard1"}
        job = await svc.drive(job.id)
        assert job.state == "done", job.error
        cat = (await ops.current())[0]
        after = await placement(conns, cat)
        assert after.keys() == before.keys()
        came_from = {before[k][0] for k in after if after[k][0] == "shard2"}
        assert came_from == {"shard0", "shard1"}
        assert await slots_and_pubs(conns) == []
        await store.close()
        for c in conns.values():
            await c.close()

    run(body())


def test_cancel_after_the_copy_rolls_back(cluster):
    async def body():
        store, conns = await setup(cluster, n=200)
        ops = CatalogService(store)
        svc = ReshardService(store, ops, lambda: True)
        cat0 = (await ops.current())[0]
        job = await svc.create("split", "shard0", "shard2")
        # Step through preconditions, schema, capture and copy, then cancel.
        async with Connections(cat0) as cs:
            for _ in range(4):
                job = await svc._step(cs, job)
        assert job.step == "catchup" and len(job.copied) == 2
        n_dst = await conns["shard2"].fetchval("SELECT count(*) FROM acct") + \
            await conns["shard2"].fetchval("SELECT count(*) FROM tag")
        assert n_dst > 0
        await svc.cancel(job.id)
        job = await svc.drive(job.id)
        assert job.state == "cancelled"
        assert await slots_and_pubs(conns) == []
        for t in TABLES:
            assert await conns["shard2"].fetchval(f"SELECT count(*) FROM {t}") == 0
        assert (await ops.current())[0].ring == cat0.ring
        await placement(conns, cat0)
        with pytest.raises(JobError):
            await svc.cancel(job.id)
        await store.close()
        for c in conns.values():
            await c.close()

    run(body())


def test_guard_refuses_source_writes_to_moving_ranges_until_rollback(cluster):
    async def body():
        store, conns = await setup(cluster, n=200)
        ops = CatalogService(store)
        svc = ReshardService(store, ops, lambda: True)
        cat0 = (await ops.current())[0]
        job = await svc.create("split", "shard0", "shard2")
        async with Connections(cat0) as cs:
            while job.step != "final_catchup":
                job = await svc._step(cs, job)
        assert (await ops.current())[0].fences           # the fence is up
        # The token-index checksum agrees with the scanning one on the source; the
        # destination has no token index (its rows are hashed once instead) and agrees too,
        # per range and in the one-pass totals the copy is checked with.
        infos = await svc._describe(cs_conns := Connections(cat0), job)
        async with cs_conns:
            for info in infos[("shard0", None)].values():
                src_c, dst_c = await cs_conns.get("shard0"), await cs_conns.get("shard2")
                assert await tables.has_token_index(src_c, info.name, job.id)
                assert not await tables.has_token_index(dst_c, info.name, job.id)
                scanned = await verify.summary(src_c, info, job.moves)
                assert scanned and scanned == await verify.summary(src_c, info, job.moves, True)
                assert scanned == await verify.summary(dst_c, info, job.moves)
                total = (sum(n for n, _ in scanned.values()),
                         str(sum(int(c) for _, c in scanned.values())))
                assert await verify.total(src_c, info, job.moves, True) == total
                assert await verify.total(dst_c, info, job.moves) == total
            # The by-key comparison the fence uses after a verified copy.
            acct = infos[("shard0", None)]["acct"]
            src_c, dst_c = await cs_conns.get("shard0"), await cs_conns.get("shard2")
            keys = [(str(r[0]),) for r in await dst_c.fetch("SELECT id FROM acct LIMIT 5")]
            assert keys and await verify.touched(src_c, dst_c, acct, keys + [("-1",)]) == []
            await dst_c.execute("UPDATE acct SET note = 'drift' WHERE id = $1", int(keys[0][0]))
            diff = await verify.touched(src_c, dst_c, acct, keys)
            assert len(diff) == 1 and "drift" in diff[0]
        src = conns["shard0"]
        moving = next(i for i in range(200) if any(m.contains(token(i)) for m in job.moves))
        staying = next(i for i in range(200) if cat0.ring.owner(token(i)) == "shard0"
                       and not any(m.contains(token(i)) for m in job.moves))
        with pytest.raises(asyncpg.SerializationError):
            await src.execute("UPDATE acct SET note = 'late' WHERE id = $1", moving)
        with pytest.raises(asyncpg.SerializationError):
            await src.execute("INSERT INTO acct VALUES ($1, 'x', 0, NULL)", moving + 1_000_000
                              if any(m.contains(token(moving + 1_000_000)) for m in job.moves)
                              else moving)
        assert await src.execute("UPDATE acct SET note = 'ok' WHERE id = $1", staying) == \
            "UPDATE 1"
        await svc.cancel(job.id)
        assert (await svc.drive(job.id)).state == "cancelled"
        assert not (await ops.current())[0].fences
        assert await src.execute("UPDATE acct SET note = 'after' WHERE id = $1", moving) == \
            "UPDATE 1"
        assert await src.fetchval("SELECT count(*) FROM pg_proc WHERE proname LIKE "
                                  "'pgshard_guard_%'") == 0
        await store.close()
        for c in conns.values():
            await c.close()

    run(body())


def test_a_verification_mismatch_fails_the_job_before_the_flip(cluster):
    async def body():
        store, conns = await setup(cluster, n=200)
        ops = CatalogService(store)
        svc = ReshardService(store, ops, lambda: True)
        cat0 = (await ops.current())[0]
        job = await svc.create("split", "shard0", "shard2")
        async with Connections(cat0) as cs:
            while job.step != "verify":
                job = await svc._step(cs, job)
        # A row the copy "lost": gone from the target behind the job's back.
        victim = await conns["shard2"].fetchval("SELECT id FROM acct LIMIT 1")
        await conns["shard2"].execute("DELETE FROM acct WHERE id = $1", victim)
        job = await svc.drive(job.id)
        assert job.state == "failed" and "verification failed" in job.error
        assert "acct" in job.error and "destination" in job.error
        cat = (await ops.current())[0]
        assert cat.ring == cat0.ring and not cat.fences and not cat.filter_reads
        assert await conns["shard2"].fetchval("SELECT count(*) FROM acct") == 0
        await placement(conns, cat0)
        assert await slots_and_pubs(conns) == []
        await store.close()
        for c in conns.values():
            await c.close()

    run(body())


def test_refusals(cluster):
    async def body():
        store, conns = await setup(cluster, n=10)
        ops = CatalogService(store)
        svc = ReshardService(store, ops, lambda: True)
        with pytest.raises(JobError) as e:
            await svc.create("split", "shard0", "shard1")     # target owns vnodes
        assert e.value.status == 409
        with pytest.raises(JobError) as e:
            await svc.create("split", "nope", "shard2")
        assert e.value.status == 404
        with pytest.raises(JobError) as e:
            await svc.create("explode", "shard0", "shard2")
        assert e.value.status == 422
        await conns["shard0"].execute("CREATE TABLE nopk (id int, v text)")
        await ops.update(lambda c: c.evolve(tables=(*c.tables, ("nopk", "id"))))
        with pytest.raises(JobError) as e:
            await svc.create("split", "shard0", "shard2")
        assert e.value.status == 409 and "nopk" in str(e.value)
        await ops.update(lambda c: c.evolve(tables=tuple(t for t in c.tables if t[0] != "nopk")))
        await conns["shard0"].execute("DROP TABLE nopk")
        job = await svc.create("split", "shard0", "shard2")
        with pytest.raises(JobError) as e:
            await svc.create("merge", "shard1", "shard0")     # overlapping job
        assert e.value.status == 409 and job.id in str(e.value)
        await svc.cancel(job.id)
        assert (await svc.drive(job.id)).state == "cancelled"
        await store.close()
        for c in conns.values():
            await c.close()

    run(body())


def test_a_flip_that_landed_is_never_rolled_back(cluster):
    """The flip's CAS landed but the job record was not updated (a crash): the resumed job
    goes forward to the cleanup, even when asked to cancel."""
    async def body():
        store, conns = await setup(cluster, n=200)
        ops = CatalogService(store)
        svc = ReshardService(store, ops, lambda: True)
        cat0 = (await ops.current())[0]
        job = await svc.create("split", "shard0", "shard2")
        async with Connections(cat0) as cs:
            while job.step != "flip":
                job = await svc._step(cs, job)
        # The CAS of the flip, without the job's own record of it.
        await ops.update(lambda c: c.evolve(ring=job.new_ring, fences=()))
        await svc.jobs.update(job.id, lambda j: dataclasses.replace(j, cancel_requested=True))
        job = await svc.drive(job.id)
        assert job.state == "done", job.error
        cat = (await ops.current())[0]
        await placement(conns, cat)
        assert await slots_and_pubs(conns) == []
        await store.close()
        for c in conns.values():
            await c.close()

    run(body())
