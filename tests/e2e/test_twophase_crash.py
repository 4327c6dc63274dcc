"""Crash safety of two-phase commit through the proxy: the proxy process dies (os._exit at
a test-only fault point, what a SIGKILL leaves) after PREPARE, after the decision and in
the middle of COMMIT PREPARED, under a load of cross-shard transactions; restarted on the
same metadata store, its recovery leaves no prepared transaction on any primary, and every
transaction is whole on both shards or absent from both — present whenever its client was
told it committed, absent whenever it was told it failed."""

from __future__ import annotations

import asyncio
import random
import tempfile
import time

import asyncpg
import pytest

from pgshard.ring import Ring, hashing
from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import USERS, _shards

TABLE = "crash_pairs"


def _config(cluster, port: int | None = None) -> dict:
    proxy = {"database": "app", "pool_size": 8, "query_wait_timeout": 10,
             "twophase_recovery_interval": 0.5, "twophase_timeout": 3}
    if port is not None:
        proxy["port"] = port
    return {"proxy": proxy, "users": USERS, "shards": _shards(cluster),
            "tables": [{"name": TABLE, "shard_key": "id"}]}


def _keys(cluster, n: int) -> dict[str, list[int]]:
    ring = Ring.build([s.name for s in cluster.shards])
    out: dict[str, list[int]] = {s.name: [] for s in cluster.shards}
    k = 1
    while min(len(v) for v in out.values()) < n:
        out[ring.owner(hashing.token(hashing.canonical_key(k)))].append(k)
        k += 1
    return out


async def _load(dsn: str, pairs: list[tuple[int, int]], ledger: dict, stop: float) -> None:
    """Each client commits pairs (one row per shard) until the proxy dies."""
    try:
        c = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return
    try:
        while pairs and time.monotonic() < stop:
            a, b = pairs.pop()
            ledger[(a, b)] = "unknown"
            try:
                async with c.transaction():
                    await c.execute(f"INSERT INTO {TABLE} (id, peer) VALUES ($1, $2)", a, b)
                    await c.execute(f"INSERT INTO {TABLE} (id, peer) VALUES ($1, $2)", b, a)
                ledger[(a, b)] = "committed"
            except asyncpg.PostgresError as exc:
                if (exc.sqlstate or "").startswith("08"):
                    return                    # the connection ended: outcome unknown
                # The server or the proxy answered an error (kept for the failure message).
                ledger[(a, b)] = "failed"
                errors[(a, b)] = f"{type(exc).__name__} {exc.sqlstate}: {exc}"
            except (TimeoutError, OSError, asyncpg.InterfaceError):
                return                        # the proxy died: outcome unknown
    finally:
        c.terminate()


errors: dict[tuple[int, int], str] = {}


def _prepared(cluster) -> int:
    return sum(int(s.primary.psql("SELECT count(*) FROM pg_prepared_xacts")) for s in cluster.shards)


def _present(cluster) -> set[int]:
    out: set[int] = set()
    for s in cluster.shards:
        out |= {int(x) for x in s.primary.psql(f"SELECT id FROM {TABLE}").split()}
    return out


@pytest.mark.parametrize("point", ["after_prepare", "after_decision", "during_commit"])
def test_proxy_killed_mid_commit_recovers_whole_transactions(pg_cluster, point):
    for s in pg_cluster.shards:
        s.primary.psql(f"DROP TABLE IF EXISTS {TABLE}; "
                       f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, peer bigint)")
    keys = _keys(pg_cluster, 400)
    rnd = random.Random(point)
    pairs = list(zip(keys["shard0"], keys["shard1"], strict=False))
    rnd.shuffle(pairs)
    workdir = tempfile.mkdtemp(prefix="pgshard-2pc-crash-")
    ledger: dict[tuple[int, int], str] = {}
    port = None
    for _ in range(3):   # three crashes in a row, each restart on the same store
        at = rnd.randint(5, 25)
        p = ProxyProcess(_config(pg_cluster, port), workdir=workdir,
                         env={"PGSHARD_2PC_FAULT": f"{point}@{at}"}).start()
        port = p.port
        try:
            async def run(dsn: str):
                stop = time.monotonic() + 30
                await asyncio.gather(*(_load(dsn, pairs, ledger, stop) for _ in range(6)))
            asyncio.run(run(p.dsn()))
            p.proc.wait(30)
            assert p.proc.returncode == 137, f"the fault point did not stop the proxy: {p.log()}"
        finally:
            p.stop()
    # Restarted without the fault: recovery (the elected manager) resolves what is left.
    with ProxyProcess(_config(pg_cluster, port), workdir=workdir):
        deadline = time.monotonic() + 60
        while _prepared(pg_cluster) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _prepared(pg_cluster) == 0
    present = _present(pg_cluster)
    counts = {"committed": 0, "failed": 0, "unknown": 0}
    for (a, b), said in ledger.items():
        counts[said] += 1
        assert (a in present) == (b in present), f"{a}/{b} half committed ({said})"
        if said == "committed":
            assert a in present, f"{a}/{b} was acknowledged but is missing"
        if said == "failed":
            assert a not in present, \
                f"{a}/{b} was reported failed but is present: {errors.get((a, b))}"
    assert counts["committed"] > 10, counts
    print(f"2PC crash at {point}: {counts}")
