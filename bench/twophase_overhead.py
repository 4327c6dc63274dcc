"""What two-phase commit costs at the coordinator, without the proxy: concurrent
transactions that update one row on each of two shards, committed with two plain COMMITs
(what a cross-shard transaction did before 2PC, not atomic) or with the Coordinator
(PREPARE TRANSACTION on both, the decision in the metadata store, COMMIT PREPARED on both).

    .venv/bin/python -m bench.twophase_overhead [--seconds 6] [--clients 8] [--durable]
                                                [--store sqlite|etcd]

Prints transactions per second and latency percentiles per mode; the two modes alternate
in rounds so that load from elsewhere on the machine falls on both."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time

import asyncpg

from pgshard.cluster import LocalCluster
from pgshard.proxy.decisions import DecisionLog
from pgshard.proxy.twophase import Coordinator
from pgshard.store import open_store
from tests.fixtures.twophase import asyncpg_run

ROWS = 1000


async def _client(dsns, mode, coord, stop_at, latencies):
    conns = {sh: await asyncpg.connect(dsn) for sh, dsn in dsns.items()}
    run = asyncpg_run(conns)
    try:
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            a, b = random.randrange(ROWS), random.randrange(ROWS)
            await asyncio.gather(*(c.execute("BEGIN") for c in conns.values()))
            await asyncio.gather(
                conns["shard0"].execute("UPDATE acct SET bal = bal - 1 WHERE id = $1", a),
                conns["shard1"].execute("UPDATE acct SET bal = bal + 1 WHERE id = $1", b))
            if mode == "1pc":
                for c in conns.values():
                    await c.execute("COMMIT")
            else:
                await coord.commit(coord.new_txn_id(), ["shard0", "shard1"], run)
            latencies.append(time.perf_counter() - t0)
    finally:
        for c in conns.values():
            await c.close()


async def _round(dsns, mode, coord, clients, seconds):
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds
    await asyncio.gather(*(_client(dsns, mode, coord, stop_at, latencies)
                           for _ in range(clients)))
    return latencies


async def _main(args):
    base = tempfile.mkdtemp(prefix="pgshard-bench-2pc-")
    os.chmod(base, 0o755)
    cluster = LocalCluster(base, shards=2, replicas=0, durable=args.durable)
    cluster.create()
    try:
        for s in cluster.shards:
            s.primary.psql("CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL);"
                           f"INSERT INTO acct SELECT g, 0 FROM generate_series(0, {ROWS - 1}) g")
        dsns = {s.name: s.primary.dsn for s in cluster.shards}
        etcd = None
        if args.store == "etcd":
            from tests.fixtures.etcd import EtcdServer

            etcd = EtcdServer(tempfile.mkdtemp(prefix="pgshard-bench-etcd-"))
            etcd.start()
        store = await open_store(etcd.url if etcd else f"sqlite://{base}/meta.db")
        coord = Coordinator(DecisionLog(store), "bench")
        results = {"1pc": [], "2pc": []}
        for _ in range(args.rounds):
            for mode in ("1pc", "2pc"):
                results[mode] += await _round(dsns, mode, coord, args.clients,
                                              args.seconds / args.rounds)
        await coord.drain()
        await store.close()
        if etcd is not None:
            etcd.stop()
    finally:
        cluster.destroy()
    print(f"{args.clients} clients, {args.seconds:g} s per mode, "
          f"{'durable' if args.durable else 'fsync off'} servers, decision log in {args.store}")
    for mode, lat in results.items():
        lat.sort()
        tps = len(lat) / args.seconds
        pct = {p: lat[min(len(lat) - 1, int(len(lat) * p / 100))] * 1000 for p in (50, 99)}
        print(f"  {mode}: {tps:8.0f} tx/s   p50 {pct[50]:6.2f} ms   p99 {pct[99]:6.2f} ms   "
              f"mean {statistics.fmean(lat) * 1000:6.2f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--durable", action="store_true")
    p.add_argument("--store", choices=("sqlite", "etcd"), default="sqlite")
    asyncio.run(_main(p.parse_args()))


if __name__ == "__main__":
    main()
