"""`make bench-failover`: failover time (SIGKILL of the primary -> first successful write
through pgshard) and acknowledged writes lost, over repetitions, with synchronous and with
asynchronous replication; switchover pause (statements held, slowest statement) too.

Each repetition kills the shard's current primary under write load, waits for the first
acknowledged write after the kill, checks every acknowledged write on the new primary,
then rejoins the old primary as a replica for the next round. Writes bench/failover.json.

    python -m bench.failover --reps 5
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
from pathlib import Path

import asyncpg

from pgshard.config import parse_dsn
from tests.fixtures.clusters import temp_cluster
from tests.fixtures.runtime import running_runtime, runtime_config

DDL = "CREATE TABLE ledger (id bigint PRIMARY KEY)"
WRITERS = 4


class Load:
    def __init__(self, dsn: str, keys):
        self.dsn, self.keys = dsn, keys
        self.acked: list[int] = []
        self.times: list[float] = []
        self.latencies: list[float] = []
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.stop = asyncio.Event()

    async def writer(self) -> None:
        conn = None
        while not self.stop.is_set():
            key = next(self.keys)
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(self.dsn, timeout=20)
                t0 = time.monotonic()
                await asyncio.wait_for(conn.execute("INSERT INTO ledger VALUES ($1)", key), 30)
                t1 = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - any failure is a failed statement
                self.errors += 1
                self.error_kinds[type(exc).__name__] = self.error_kinds.get(
                    type(exc).__name__, 0) + 1
                if conn is not None:
                    conn.terminate()
                conn = None
                await asyncio.sleep(0.02)
                continue
            self.acked.append(key)
            self.times.append(t1)
            self.latencies.append(t1 - t0)
        if conn is not None:
            await conn.close()

    async def run(self, body):
        """Await the coroutine body while the writers run."""
        tasks = [asyncio.create_task(self.writer()) for _ in range(WRITERS)]
        try:
            return await body
        finally:
            self.stop.set()
            await asyncio.gather(*tasks)


async def wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step timed out")
        await asyncio.sleep(0.02)


def node_of(cluster, dsn: str):
    d = parse_dsn(dsn)
    return cluster.node_at(d.host, d.port)


def present(dsn_node, keys: list[int]) -> int:
    if not keys:
        return 0
    return int(dsn_node.psql("SELECT count(*) FROM ledger WHERE id = ANY('{"
                             + ",".join(map(str, keys)) + "}'::bigint[])"))


async def replica_ready(rt) -> None:
    """The rejoined replica is checked, streaming, and (sync) recorded synchronous."""
    def ready():
        shard = rt.proxy.catalog.shard("shard0")
        facts = [rt.proxy.replicas.node_facts(r) for r in shard.replicas]
        return facts and all(f.reachable and f.streaming for f in facts) and (
            not shard.sync_quorum or set(shard.sync) == set(shard.replicas))
    await wait_for(ready, 30)


async def kill_round(load: Load, node) -> float:
    """Kill node under load; seconds from its death to the first acknowledged write."""
    await wait_for(lambda: len(load.acked) > 200, 30)
    await asyncio.to_thread(node.kill)
    killed = time.monotonic()
    await wait_for(lambda: load.times and load.times[-1] > killed, 60)
    first = min(t for t in load.times if t > killed)
    await asyncio.sleep(0.3)
    return first - killed


async def switch_round(load: Load, rt, switchover) -> float:
    await wait_for(lambda: len(load.acked) > 200, 30)
    _, pause = await switchover(rt.plane.failover, "shard0", None)
    n = len(load.acked)
    await wait_for(lambda: len(load.acked) > n + 100, 30)
    return pause


async def failovers(sync: bool, reps: int) -> dict:
    keys = itertools.count(1)
    times, lost, errors = [], [], []
    with temp_cluster(shards=1, replicas=1, durable=True, sync_replication=sync) as cluster:
        cluster.shards[0].primary.psql(DDL)
        cfg = runtime_config(cluster, users=[{"name": "app", "password": "app-secret",
                                              "pool_size": WRITERS}],
                             tables=[{"name": "ledger", "shard_key": "id"}],
                             ha={"local_cluster": str(cluster.base_dir)})
        async with running_runtime(cfg) as rt:
            await wait_for(lambda: rt.plane.membership.is_leader, 15)
            if sync:
                await wait_for(lambda: rt.proxy.catalog.shard("shard0").sync_quorum > 0, 20)
            dsn = f"postgresql://app:app-secret@127.0.0.1:{rt.proxy.port}/app"
            for _ in range(reps):
                shard = rt.proxy.catalog.shard("shard0")
                node = node_of(cluster, shard.primary)
                load = Load(dsn, keys)
                times.append(await load.run(kill_round(load, node)))
                errors.append(load.error_kinds)
                new = rt.proxy.catalog.shard("shard0").primary
                new_node = node_of(cluster, new)
                lost.append(len(load.acked) - present(new_node, load.acked))
                await rt.plane.failover.rejoin("shard0", node.dsn)
                await replica_ready(rt)
    return {"replication": "sync" if sync else "async", "reps": reps,
            "failover_seconds": times, "p50": statistics.median(times), "max": max(times),
            "acked_writes_lost": lost, "failed_statements_in_flight": errors}


async def switchovers(reps: int) -> dict:
    from pgshard.control.switchover import switchover

    keys = itertools.count(1)
    pauses, slowest, failed = [], [], []
    with temp_cluster(shards=1, replicas=1, sync_replication=True) as cluster:
        cluster.shards[0].primary.psql(DDL)
        cfg = runtime_config(cluster, users=[{"name": "app", "password": "app-secret",
                                              "pool_size": WRITERS}],
                             tables=[{"name": "ledger", "shard_key": "id"}],
                             ha={"local_cluster": str(cluster.base_dir)})
        async with running_runtime(cfg) as rt:
            await wait_for(lambda: rt.plane.membership.is_leader, 15)
            dsn = f"postgresql://app:app-secret@127.0.0.1:{rt.proxy.port}/app"
            for _ in range(reps):
                old = rt.proxy.catalog.shard("shard0").primary
                load = Load(dsn, keys)
                pauses.append(await load.run(switch_round(load, rt, switchover)))
                slowest.append(max(load.latencies))
                failed.append(load.errors)
                await rt.plane.failover.rejoin("shard0", old)
                await replica_ready(rt)
    return {"reps": reps, "pause_seconds": pauses, "pause_p50": statistics.median(pauses),
            "pause_max": max(pauses), "slowest_statement_seconds": slowest,
            "failed_statements": failed}


async def main(reps: int) -> dict:
    results = {"sync": await failovers(True, reps), "async": await failovers(False, reps),
               "switchover": await switchovers(reps)}
    for mode in ("sync", "async"):
        r = results[mode]
        print(f"failover ({mode} replication), {reps} reps: kill -> first write p50 "
              f"{r['p50']:.2f}s, max {r['max']:.2f}s; acked writes lost "
              f"{sum(r['acked_writes_lost'])} ({r['acked_writes_lost']}); in-flight statements "
              f"failed {r['failed_statements_in_flight']}")
    s = results["switchover"]
    print(f"switchover, {reps} reps: statements held p50 {s['pause_p50']:.3f}s, max "
          f"{s['pause_max']:.3f}s; slowest statement max {max(s['slowest_statement_seconds']):.3f}s;"
          f" failed statements {sum(s['failed_statements'])}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).with_name("failover.json")))
    args = parser.parse_args()
    out = asyncio.run(main(args.reps))
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"results in {args.out}")
