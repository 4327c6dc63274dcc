"""The cost of global ids (pgshard.control.global_ids): one manager round aligning every
sequence of N declared tables that already hold rows on 2 shards, a steady-state round with
nothing to do, and a CREATE TABLE of a declared table through the shard's event trigger.

    python -m bench.global_ids --tables 20 --rows 1000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import asyncpg

from pgshard.control.global_ids import GlobalIds
from pgshard.ring.catalog import Catalog, Shard
from pgshard.store import open_store
from tests.fixtures.clusters import temp_cluster


async def run(pg, n_tables: int, rows: int) -> dict:
    desc = pg.describe()["shards"]
    tables = {f"gid_t{i}": "k" for i in range(n_tables)}
    tables["gid_late"] = "k"
    conns = [await asyncpg.connect(s["primary"]) for s in desc]
    for c in conns:
        for t in tables:
            if t != "gid_late":
                await c.execute(f"CREATE TABLE {t} (k int, id bigserial, PRIMARY KEY (k, id))")
                await c.execute(f"INSERT INTO {t} (k) SELECT g FROM generate_series(1, $1) g",
                                rows)
    cat = Catalog.initial([Shard(s["name"], s["primary"]) for s in desc], tables)
    store = await open_store(f"sqlite:///{tempfile.mkdtemp()}/m.db", cluster="bench")
    ids = GlobalIds(store, lambda: cat, lambda: True)
    t = time.perf_counter()
    changed = await ids.align(cat)
    first = time.perf_counter() - t
    steady = []
    for _ in range(7):
        t = time.perf_counter()
        assert await ids.align(cat) == []
        steady.append(time.perf_counter() - t)
    t = time.perf_counter()
    await conns[0].execute("CREATE TABLE gid_late (k int, id serial, PRIMARY KEY (k, id))")
    ddl = time.perf_counter() - t
    inc = await conns[0].fetchval("SELECT increment_by FROM pg_sequences "
                                  "WHERE sequencename = 'gid_late_id_seq'")
    await store.close()
    for c in conns:
        await c.close()
    return {"sequences_aligned": len(changed), "first_round_ms": round(first * 1000, 1),
            "steady_round_ms": round(statistics.median(steady) * 1000, 1),
            "create_table_ms": round(ddl * 1000, 1), "late_table_increment": inc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", type=int, default=20)
    ap.add_argument("--rows", type=int, default=1000)
    args = ap.parse_args()
    with temp_cluster(shards=2, replicas=0) as pg:
        print(asyncio.run(run(pg, args.tables, args.rows)))


if __name__ == "__main__":
    main()
