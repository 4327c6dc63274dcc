"""`make bench-reshard`: split a shard holding N rows while writers run at a fixed rate.

Reports rows/s copied, the job's time against the floor (a plain COPY of the same rows —
selected by the same token predicate — from the source to a scratch table on the target,
same servers, same run) and the write pause: p50/p99/max latency of client writes to moving
keys that overlapped the fence. Writes results to bench/results-reshard.json.

    python -m bench.reshard --rows 1000000 --rate 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path

import aiohttp
import asyncpg
import mmh3

from pgshard.ring.catalog import Catalog
from tests.fixtures.clusters import temp_cluster
from tests.fixtures.runtime import ADMIN_PASSWORD, Api, running_runtime, runtime_config

PAYLOAD = "x" * 180


def token(key) -> int:
    return mmh3.hash(str(key).encode(), seed=0, signed=False)


async def load_rows(desc, catalog: Catalog, rows: int) -> None:
    async def one(s):
        spans = ",".join(f"({r.lo},{r.hi}]" for r in catalog.ring.ranges(s["name"]))
        conn = await asyncpg.connect(s["primary"])
        await conn.execute(f"INSERT INTO acct SELECT g, '{PAYLOAD}' FROM generate_series(1, "
                           f"{rows}) g WHERE pgshard.hash(g::text) <@ '{{{spans}}}'"
                           "::int8multirange")
        await conn.execute("VACUUM ANALYZE acct")
        await conn.close()

    await asyncio.gather(*(one(s) for s in desc[:2]))


async def copy_floor(src_dsn: str, dst_dsn: str, spans: str) -> tuple[float, int]:
    """Seconds for COPY … TO STDOUT | COPY … FROM STDIN of the moving rows."""
    src, dst = await asyncpg.connect(src_dsn), await asyncpg.connect(dst_dsn)
    await dst.execute("CREATE TABLE floor_copy (id bigint PRIMARY KEY, payload text)")
    q: asyncio.Queue = asyncio.Queue(64)

    async def produce():
        await src.copy_from_query(f"SELECT * FROM acct WHERE pgshard.hash(id::text) <@ "
                                  f"'{spans}'::int8multirange", output=q.put, format="binary")
        await q.put(None)

    async def chunks():
        while (c := await q.get()) is not None:
            yield c

    t0 = time.monotonic()
    task = asyncio.create_task(produce())
    status = await dst.copy_to_table("floor_copy", source=chunks(), format="binary")
    await task
    elapsed = time.monotonic() - t0
    await dst.execute("DROP TABLE floor_copy")
    await src.close()
    await dst.close()
    return elapsed, int(status.split()[-1])


async def writers(dsn: str, rate: float, keys: int, moving, stop: asyncio.Event, out: list,
                  seed: int):
    conn = await asyncpg.connect(dsn)
    rnd = random.Random(seed)
    interval = 1 / rate
    nxt = time.monotonic()
    while not stop.is_set():
        k = rnd.randrange(1, keys + 1)
        t0 = time.time()
        try:
            await conn.execute("UPDATE acct SET payload = $2 WHERE id = $1", k, "y" * 10)
            ok = True
        except asyncpg.PostgresError:
            ok = False
        out.append((t0, time.time(), moving(k), ok))
        nxt += interval
        await asyncio.sleep(max(0.0, nxt - time.monotonic()))
    await conn.close()


async def main(rows: int, rate: float) -> dict:
    with temp_cluster(shards=3, replicas=0) as cluster:
        desc = cluster.describe()["shards"]
        for s in desc[:2]:
            s_conn = await asyncpg.connect(s["primary"])
            await s_conn.execute("CREATE TABLE acct (id bigint PRIMARY KEY, payload text)")
            await s_conn.close()
        cfg = runtime_config(cluster, shards=[{"name": s["name"], "primary": s["primary"],
                                               "replicas": []} for s in desc[:2]],
                             tables=[{"name": "acct", "shard_key": "id"}],
                             proxy={"pool_size": 8})
        async with running_runtime(cfg) as rt, aiohttp.ClientSession() as http:
            catalog = rt.proxy.catalog
            t0 = time.monotonic()
            await load_rows(desc, catalog, rows)
            print(f"loaded {rows} rows in {time.monotonic() - t0:.1f}s", flush=True)
            api = Api(rt.api_url, http)
            tok = await api.login("admin", ADMIN_PASSWORD)
            status, body, _ = await api.request("POST", "/api/v1/shards", token=tok, json={
                "name": "shard2", "primary": desc[2]["primary"], "replicas": []})
            assert status == 201, body
            from pgshard.ring.ranges import plan_split
            new_ring, moves = plan_split(catalog.ring, "shard0", "shard2")
            spans = "{" + ",".join(f"({m.lo},{m.hi}]" for m in moves) + "}"
            floor, floor_rows = await copy_floor(desc[0]["primary"], desc[2]["primary"], spans)
            print(f"floor: {floor_rows} rows by plain COPY in {floor:.2f}s", flush=True)

            def moving(k):
                t = token(k)
                return any(m.lo < t <= m.hi for m in moves)

            stop, samples = asyncio.Event(), []
            dsn = f"postgresql://app:app-secret@127.0.0.1:{rt.proxy.port}/app"
            load = asyncio.gather(*(writers(dsn, rate / 4, rows, moving, stop, samples, seed)
                                    for seed in range(4)))
            await asyncio.sleep(1)
            t0 = time.monotonic()
            status, job, _ = await api.request("POST", "/api/v1/jobs", token=tok, json={
                "kind": "split", "source": "shard0", "target": "shard2"})
            assert status == 202, job
            phases: dict[str, float] = {}
            while job["state"] not in ("done", "failed", "cancelled"):
                await asyncio.sleep(0.02)
                job = (await api.request("GET", f"/api/v1/jobs/{job['id']}", token=tok))[1]
                phases.setdefault(job["phase"] or job["state"], time.monotonic() - t0)
            elapsed = time.monotonic() - t0
            await asyncio.sleep(0.5)
            stop.set()
            await load
            record = (await rt.plane.reshard.jobs.get(job["id"]))[0]
            fence_start = record.fence_started
            fence_end = fence_start + (record.write_pause_ms or 0) / 1000
            during = [(e - s) * 1000 for s, e, mv, ok in samples
                      if mv and s <= fence_end and e >= fence_start]
            failed = sum(1 for *_, ok in samples if not ok)

            def pct(xs, p):
                # Nearest rank: with few samples the top ones, never an extrapolation.
                xs = sorted(xs)
                return round(xs[min(len(xs) - 1, int(len(xs) * p / 100))], 1) if xs else None

            result = {
                "rows": rows, "rows_copied": job["progress"]["rows_copied"],
                "state": job["state"], "job_seconds": round(elapsed, 2),
                "rows_per_second": round(job["progress"]["rows_copied"] / elapsed),
                "floor_seconds": round(floor, 2), "ratio_to_floor": round(elapsed / floor, 2),
                "write_pause_ms": job["write_pause_ms"],
                "writes": len(samples), "writes_failed": failed,
                "writes_to_moving_keys_during_fence": len(during),
                "fence_write_latency_ms": {"p50": pct(during, 50), "p99": pct(during, 99),
                                           "max": round(max(during), 1) if during else None},
                "write_rate": rate,
                "phase_started_at_seconds": {k: round(v, 2) for k, v in phases.items()},
            }
            return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=200.0, help="client writes per second")
    ap.add_argument("--verbose", action="store_true", help="log each job step's duration")
    args = ap.parse_args()
    if args.verbose:
        import logging
        logging.basicConfig(level=logging.WARNING)
        logging.getLogger("pgshard.reshard").setLevel(logging.DEBUG)
    res = asyncio.run(main(args.rows, args.rate))
    print(json.dumps(res, indent=2))
    Path(__file__).with_name("results-reshard.json").write_text(json.dumps(res, indent=2) + "\n")
