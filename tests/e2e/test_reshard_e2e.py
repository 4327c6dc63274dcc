"""Online resharding end to end: a 2-shard cluster behind pgshard (a manager process and a
second router sharing its store) splits shard0 into a newly added empty shard2, merges it
back, then rebalances into shard2 added again, while clients write through both routers
(inserts of new keys, updates and deletes of existing ones, on a bigint-keyed table and a
text-keyed table with a composite primary key) and read with and without keys (fan-out
count(*) over rows nobody writes must be exact at every moment). After each job every row
exists exactly once, on the shard the new ring names, and the rows equal the ledger of
writes the clients were told committed; no client statement failed."""

from __future__ import annotations

import asyncio
import json
import random
import time

import aiohttp
import asyncpg
import mmh3
import pytest

from pgshard.ring.catalog import Catalog
from tests.fixtures.clusters import temp_cluster
from tests.fixtures.runtime import ADMIN_PASSWORD, Api, running_runtime, runtime_config

pytestmark = pytest.mark.integration

DDL = [
    "CREATE TABLE acct (id bigint PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL)",
    "CREATE TABLE tag (name text, n int, v text NOT NULL, PRIMARY KEY (name, n))",
    "CREATE TABLE frozen (id bigint PRIMARY KEY, v text)",
]
TABLES = [{"name": "acct", "shard_key": "id"}, {"name": "tag", "shard_key": "name"},
          {"name": "frozen", "shard_key": "id"}]
KEYS = {"acct": "id", "tag": "name", "frozen": "id"}
INITIAL = 1500
FROZEN = 400
WORKERS = 4


def token(key) -> int:
    return mmh3.hash(str(key).encode(), seed=0, signed=False)


class Load:
    """Writers with a ledger of acknowledged writes, and readers checking what they see."""

    def __init__(self, dsns: list[str]):
        self.dsns = dsns
        self.acct: dict[int, int] = {}
        self.tag: dict[tuple[str, int], str] = {}
        self.errors: list[str] = []
        self.counts: list[int] = []
        self.keyed_reads = 0
        self.writes = 0
        self.stop = asyncio.Event()
        self.next_id = 10_000_000

    async def seed(self, conn) -> None:
        for i in range(INITIAL):
            await conn.execute("INSERT INTO acct VALUES ($1, $2, $3)", i, f"o{i}", i)
            self.acct[i] = i
            name = f"t{i % 300}"
            await conn.execute("INSERT INTO tag VALUES ($1, $2, $3)", name, i, f"v{i}")
            self.tag[(name, i)] = f"v{i}"
        for i in range(FROZEN):
            await conn.execute("INSERT INTO frozen VALUES ($1, $2)", i, f"f{i}")

    async def writer(self, w: int) -> None:
        rnd = random.Random(w)
        conn = await asyncpg.connect(self.dsns[w % len(self.dsns)])
        mine_a = [k for k in self.acct if k % WORKERS == w]
        mine_t = [k for k in self.tag if k[1] % WORKERS == w]
        try:
            while not self.stop.is_set():
                op = rnd.random()
                try:
                    if op < 0.3:
                        self.next_id += 1
                        k = self.next_id * WORKERS + w
                        await conn.execute("INSERT INTO acct VALUES ($1, $2, $3)", k, "new", 1)
                        self.acct[k] = 1
                        mine_a.append(k)
                    elif op < 0.55 and mine_a:
                        k = rnd.choice(mine_a)
                        v = rnd.randrange(1_000_000)
                        tag = await conn.execute("UPDATE acct SET balance = $2 WHERE id = $1", k, v)
                        if tag == "UPDATE 1":
                            self.acct[k] = v
                    elif op < 0.65 and mine_a:
                        k = mine_a.pop(rnd.randrange(len(mine_a)))
                        await conn.execute("DELETE FROM acct WHERE id = $1", k)
                        self.acct.pop(k, None)
                    elif op < 0.8:
                        self.next_id += 1
                        key = (f"x{self.next_id}-{w}", self.next_id * WORKERS + w)
                        await conn.execute("INSERT INTO tag VALUES ($1, $2, 'new')", *key)
                        self.tag[key] = "new"
                        mine_t.append(key)
                    elif op < 0.92 and mine_t:
                        key = rnd.choice(mine_t)
                        v = f"u{rnd.randrange(1000)}"
                        tag = await conn.execute("UPDATE tag SET v = $3 WHERE name = $1 AND n = $2",
                                                 *key, v)
                        if tag == "UPDATE 1":
                            self.tag[key] = v
                    elif mine_t:
                        key = mine_t.pop(rnd.randrange(len(mine_t)))
                        await conn.execute("DELETE FROM tag WHERE name = $1 AND n = $2", *key)
                        self.tag.pop(key, None)
                    self.writes += 1
                except asyncpg.PostgresError as exc:
                    self.errors.append(f"writer {w}: {exc.sqlstate} {exc}")
                    await asyncio.sleep(0.05)
        finally:
            await conn.close()

    async def reader(self, i: int) -> None:
        conn = await asyncpg.connect(self.dsns[i % len(self.dsns)])
        try:
            while not self.stop.is_set():
                try:
                    self.counts.append(await conn.fetchval("SELECT count(*) FROM frozen"))
                    k = random.randrange(FROZEN)
                    v = await conn.fetchval("SELECT v FROM frozen WHERE id = $1", k)
                    if v != f"f{k}":
                        self.errors.append(f"keyed read of frozen {k} gave {v!r}")
                    self.keyed_reads += 1
                except asyncpg.PostgresError as exc:
                    self.errors.append(f"reader {i}: {exc.sqlstate} {exc}")
                await asyncio.sleep(0.01)
        finally:
            await conn.close()


async def check_placement(cluster, catalog: Catalog, load: Load) -> None:
    """Every row once, on its owner, equal to the ledger."""
    acct, tag, frozen = {}, {}, {}
    for s in cluster.describe()["shards"]:
        if s["name"] not in catalog.shard_names():
            continue
        conn = await asyncpg.connect(s["primary"])
        try:
            for table, into in (("acct", acct), ("tag", tag), ("frozen", frozen)):
                for r in await conn.fetch(f"SELECT * FROM {table}"):
                    assert catalog.ring.owner(token(r[KEYS[table]])) == s["name"], \
                        f"{table} {tuple(r)} on {s['name']}, not its owner"
                    pk = (r[0], r[1]) if table == "tag" else r[0]
                    assert pk not in into, f"{table} {pk} twice"
                    into[pk] = r
        finally:
            await conn.close()
    assert {k: r["balance"] for k, r in acct.items()} == load.acct
    assert {k: r["v"] for k, r in tag.items()} == load.tag
    assert len(frozen) == FROZEN


async def run_job(api: Api, token_: str, body: dict, rt) -> dict:
    status, job, _ = await api.request("POST", "/api/v1/jobs", token=token_, json=body)
    assert status == 202, job
    phases = set()
    for _ in range(1200):
        status, job, _ = await api.request("GET", f"/api/v1/jobs/{job['id']}", token=token_)
        assert status == 200
        if job["state"] in ("done", "failed", "cancelled"):
            assert phases, "the job's phase never showed in /metrics"
            return job
        text = rt.plane.metrics.render()[0].decode()
        phases |= {line.split('phase="')[1].split('"')[0] for line in text.splitlines()
                   if line.startswith(f'pgshard_job_phase{{job="{job["id"]}"')
                   and line.endswith(" 1.0")}
        await asyncio.sleep(0.1)
    raise AssertionError(f"job did not finish: {job}")


async def test_split_and_merge_under_load():
    with temp_cluster(shards=3, replicas=0) as cluster:
        desc = cluster.describe()["shards"]
        for s in desc[:2]:
            conn = await asyncpg.connect(s["primary"])
            for d in DDL:
                await conn.execute(d)
            await conn.close()
        cfg = runtime_config(cluster, shards=[{"name": s["name"], "primary": s["primary"],
                                               "replicas": []} for s in desc[:2]],
                             tables=TABLES)
        router_cfg = {**cfg, "proxy": {**cfg["proxy"]}, "sidecar": {"enabled": False}}
        async with running_runtime(cfg) as rt, running_runtime(router_cfg, "router") as rt2, \
                aiohttp.ClientSession() as http:
            api = Api(rt.api_url, http)
            tok = await api.login("admin", ADMIN_PASSWORD)
            dsns = [f"postgresql://app:app-secret@127.0.0.1:{r.proxy.port}/app"
                    for r in (rt, rt2)]
            load = Load(dsns)
            seed = await asyncpg.connect(dsns[0])
            await load.seed(seed)
            await seed.close()
            status, body, _ = await api.request("POST", "/api/v1/shards", token=tok, json={
                "name": "shard2", "primary": desc[2]["primary"], "replicas": []})
            assert status == 201 and body.get("notes", body).get("owns_ranges") is not True, body

            for body in ({"kind": "split", "source": "shard0", "target": "shard2"},
                         {"kind": "merge", "source": "shard2", "target": "shard0"},
                         {"kind": "rebalance", "target": "shard2"}):
                if body["kind"] == "rebalance":   # the merge removed shard2: add it again
                    status, added, _ = await api.request("POST", "/api/v1/shards", token=tok,
                                                         json={"name": "shard2", "replicas": [],
                                                               "primary": desc[2]["primary"]})
                    assert status == 201, added
                load.stop.clear()
                tasks = [asyncio.create_task(load.writer(w)) for w in range(WORKERS)]
                tasks += [asyncio.create_task(load.reader(i)) for i in range(2)]
                try:
                    await asyncio.sleep(0.5)
                    writes_before, t0 = load.writes, time.monotonic()
                    job = await run_job(api, tok, body, rt)
                    print(f"{body['kind']}: {(load.writes - writes_before) / (time.monotonic() - t0):.0f}"
                          f" writes/s, write pause {job['write_pause_ms']} ms")
                    await asyncio.sleep(0.3)
                finally:
                    load.stop.set()
                    await asyncio.gather(*tasks, return_exceptions=True)
                assert job["state"] == "done", job
                assert job["write_pause_ms"] is not None
                assert load.writes > writes_before
                catalog, _ = await rt.plane.catalog_ops.current()
                for r in (rt, rt2):   # both routers serve the new ring
                    for _ in range(100):
                        if r.proxy.catalog.version == catalog.version:
                            break
                        await asyncio.sleep(0.05)
                    assert r.proxy.catalog.ring == catalog.ring
                # The second router acknowledged the job's fence (the manager waited for it).
                ack = await rt.store.get(f"fence_acks/{rt2.node_id}")
                assert ack is not None and json.loads(ack.value)["version"] >= 1
                assert load.errors == []
                assert set(load.counts) == {FROZEN}, sorted(set(load.counts))
                await check_placement(cluster, catalog, load)
                for s in desc:
                    conn = await asyncpg.connect(s["primary"])
                    assert await conn.fetch("SELECT slot_name FROM pg_replication_slots") == []
                    assert await conn.fetch("SELECT pubname FROM pg_publication") == []
                    await conn.close()
            assert "shard2" in catalog.ring.shards() and len(catalog.ring.shards()) == 3
