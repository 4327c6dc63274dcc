"""ReplicaMonitor against real streaming replicas: lag measured, paused and stopped replicas
skipped, bans, read-your-writes LSNs, round robin."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from pgshard.cluster import wait_caught_up
from pgshard.proxy.replicas import Probe, ReplicaMonitor, format_lsn, measure_lag, parse_lsn
from pgshard.ring.catalog import Catalog, Shard
from tests.fixtures.clusters import temp_cluster

# A commit flushed at once (the harness runs with synchronous_commit=off), so the primary's
# WAL position moves past the replica's before the next check.
WRITE = ("SET synchronous_commit = local; CREATE TABLE IF NOT EXISTS replica_monitor_probe(x int);"
         " INSERT INTO replica_monitor_probe VALUES (1)")


def catalog_of(shards: list[tuple[str, str, tuple[str, ...]]]) -> Catalog:
    return Catalog.initial([Shard(n, primary=p, replicas=r) for n, p, r in shards], {})


def cluster_catalog(cluster) -> Catalog:
    return catalog_of([(s.name, s.primary.dsn, tuple(r.dsn for r in s.replicas))
                       for s in cluster.shards])


async def settle(monitor: ReplicaMonitor, predicate, timeout: float = 20.0) -> None:
    """Run check rounds until predicate() holds."""
    deadline = time.monotonic() + timeout
    while True:
        await monitor.check_once()
        if predicate():
            return
        assert time.monotonic() < deadline, monitor.status()
        await asyncio.sleep(0.1)


async def caught_up(primary, replica) -> None:
    await asyncio.to_thread(wait_caught_up, primary, replica)


@pytest.fixture
async def monitor_factory():
    made: list[ReplicaMonitor] = []

    def make(catalog: Catalog, **options) -> ReplicaMonitor:
        options.setdefault("connect_timeout", 1.0)
        m = ReplicaMonitor(lambda: catalog, **options)
        made.append(m)
        return m

    yield make
    for m in made:
        await m.stop()


@pytest.fixture(scope="module")
def cluster2r():
    """A throwaway shard with two replicas: its replicas get stopped and started."""
    with temp_cluster(shards=1, replicas=2) as cluster:
        yield cluster


# -- pure parts ------------------------------------------------------------------------------

def test_parse_lsn():
    assert parse_lsn("16/B374D848") == 0x16B374D848
    assert parse_lsn("0/0") == 0
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    for bad in ("", "16", "16/", "/1", "x/1", "0x1/1", "123456789/0", "1/2/3"):
        with pytest.raises(ValueError):
            parse_lsn(bad)


def _probe(replay, *, age=None, paused=False, done=100.0):
    return Probe(sent=done - 0.01, done=done, in_recovery=True, current_lsn=None,
                 replay_lsn=replay, receive_lsn=replay, paused=paused, replay_age=age)


def test_measure_lag_table():
    # Replayed all the primary has: no lag, however old the last replayed commit.
    assert measure_lag(_probe(500, age=3600.0), 500) == (0.0, 0)
    assert measure_lag(_probe(600, age=3600.0), 500) == (0.0, 0)
    # Behind: the replay timestamp bounds it...
    assert measure_lag(_probe(400, age=2.5), 500) == (2.5, 100)
    # ...and so does the last time the primary was seen at or below the replay LSN.
    history = [(90.0, 300), (97.0, 400), (99.0, 500)]
    assert measure_lag(_probe(400, age=3600.0), 500, history) == (3.0, 100)
    assert measure_lag(_probe(400, age=1.0), 500, history) == (1.0, 100)
    # Nothing to measure by: unknowable, never assumed zero.
    assert measure_lag(_probe(400), 500) == (math.inf, 100)
    assert measure_lag(_probe(None), 500)[0] == math.inf
    # Primary never reached: the replay timestamp is all there is.
    assert measure_lag(_probe(400, age=4.0), None) == (4.0, None)


# -- the shared 2-shard cluster --------------------------------------------------------------

async def test_healthy_replica_chosen(pg_cluster, monitor_factory):
    s0, s1 = pg_cluster.shards
    await asyncio.gather(caught_up(s0.primary, s0.replicas[0]),
                         caught_up(s1.primary, s1.replicas[0]))
    # shard0 also lists its primary as a "replica": not in recovery, so never chosen.
    catalog = catalog_of([("shard0", s0.primary.dsn, (s0.primary.dsn, s0.replicas[0].dsn)),
                          ("shard1", s1.primary.dsn, (s1.replicas[0].dsn,))])
    mon = monitor_factory(catalog, max_lag=0.5)
    assert mon.choose("shard0") is None  # not checked yet
    await mon.check_once()
    assert [mon.choose("shard0") for _ in range(3)] == [1, 1, 1]
    assert mon.choose("shard1") == 0
    assert mon.choose("nope") is None
    st = mon.status()
    assert st["shard0"]["primary"]["reachable"] is True
    assert st["shard0"]["primary"]["in_recovery"] is False
    assert parse_lsn(st["shard0"]["primary"]["current_lsn"]) == mon.primary_lsn("shard0") > 0
    fake, real = st["shard0"]["replicas"]
    assert (fake["healthy"], fake["reason"], fake["in_recovery"]) == (False, "not in recovery",
                                                                       False)
    assert real["healthy"] and real["dsn"] == f"127.0.0.1:{s0.replicas[0].port}"
    assert real["lag_seconds"] <= 0.5 and real["lag_bytes"] is not None
    assert real["banned_until"] is None and real["failures"] == 0
    assert "pgshard" not in str(st)  # no user names or passwords from the DSNs
    with pytest.raises(ValueError):
        mon.choose("shard0", policy="random")


async def test_paused_replay_is_skipped_then_used_again(pg_cluster, monitor_factory):
    shard, other = pg_cluster.shards
    primary, replica = shard.primary, shard.replicas[0]
    await asyncio.gather(caught_up(primary, replica), caught_up(other.primary, other.replicas[0]))
    mon = monitor_factory(cluster_catalog(pg_cluster), max_lag=0.5)
    await mon.check_once()
    assert mon.choose("shard0") == 0
    replica.psql("SELECT pg_wal_replay_pause()")
    try:
        primary.psql(WRITE)
        primary.psql("SELECT pg_switch_wal()")
        await asyncio.sleep(0.8)
        await mon.check_once()
        assert mon.choose("shard0") is None
        r = mon.status()["shard0"]["replicas"][0]
        assert r["replay_paused"] is True and r["reason"] == "replay paused"
        assert r["lag_bytes"] > 0 and r["lag_seconds"] > 0.5
        assert mon.choose("shard1") == 0  # the other shard is not affected
    finally:
        replica.psql("SELECT pg_wal_replay_resume()")
    await settle(mon, lambda: mon.choose("shard0") == 0)
    assert mon.status()["shard0"]["replicas"][0]["replay_paused"] is False


async def test_min_lsn_waits_for_replay(pg_cluster, monitor_factory):
    shard = pg_cluster.shards[1]
    primary, replica = shard.primary, shard.replicas[0]
    await caught_up(primary, replica)
    mon = monitor_factory(cluster_catalog(pg_cluster), max_lag=60.0)
    await mon.check_once()
    replayed = parse_lsn(mon.status()["shard1"]["replicas"][0]["replay_lsn"])
    assert mon.choose("shard1", min_lsn=replayed) == 0
    assert mon.choose("shard1", min_lsn=replayed + 1) is None
    replica.psql("SELECT pg_wal_replay_pause()")
    try:
        primary.psql(WRITE)
        commit_lsn = parse_lsn(primary.psql("SELECT pg_current_wal_lsn()"))
        await mon.check_once()
        # Lag is within max_lag, but this client's write is not replayed yet.
        assert mon.choose("shard1") == 0
        assert mon.choose("shard1", min_lsn=commit_lsn) is None
        assert mon.primary_lsn("shard1") >= commit_lsn
    finally:
        replica.psql("SELECT pg_wal_replay_resume()")
    await settle(mon, lambda: mon.choose("shard1", min_lsn=commit_lsn) == 0)


# -- a throwaway shard whose replicas get stopped ----------------------------------------------

async def test_stopped_replica_banned_then_back(cluster2r, monitor_factory):
    shard = cluster2r.shards[0]
    victim = shard.replicas[1]
    await caught_up(shard.primary, victim)
    catalog = catalog_of([("shard0", shard.primary.dsn, (victim.dsn,))])
    mon = monitor_factory(catalog, max_lag=5.0, failure_threshold=2, ban_time=3.0)
    await mon.check_once()
    assert mon.choose("shard0") == 0
    await asyncio.to_thread(victim.stop, "immediate")
    try:
        await mon.check_once()
        r = mon.status()["shard0"]["replicas"][0]
        assert mon.choose("shard0") is None
        assert (r["failures"], r["banned_until"], r["reason"]) == (1, None, "last check failed")
        assert r["last_error"]
        await mon.check_once()
        r = mon.status()["shard0"]["replicas"][0]
        assert mon.choose("shard0") is None
        assert r["failures"] == 2 and r["banned_until"] > time.time() and r["reason"] == "banned"
    finally:
        await asyncio.to_thread(victim.start)
    await mon.check_once()
    r = mon.status()["shard0"]["replicas"][0]
    assert r["failures"] == 0 and r["last_error"] is None
    if r["banned_until"] is not None and r["banned_until"] > time.time() + 0.2:
        assert mon.choose("shard0") is None  # reachable, but the ban still runs
    await settle(mon, lambda: mon.choose("shard0") == 0)
    assert mon.status()["shard0"]["replicas"][0]["banned_until"] is None


async def test_round_robin_least_connections_and_ban(cluster2r, monitor_factory):
    await asyncio.to_thread(cluster2r.wait_replicas)
    mon = monitor_factory(cluster_catalog(cluster2r), max_lag=5.0, ban_time=60.0)
    await settle(mon, lambda: all(r["healthy"] for r in mon.status()["shard0"]["replicas"]))
    picks = [mon.choose("shard0") for _ in range(6)]
    assert picks in ([0, 1] * 3, [1, 0] * 3)
    busy = {0: 5, 1: 1}
    assert {mon.choose("shard0", policy="least_connections", load=busy.__getitem__)
            for _ in range(4)} == {1}
    even = {0: 2, 1: 2}
    assert {mon.choose("shard0", policy="least_connections", load=even.__getitem__)
            for _ in range(4)} == {0, 1}
    # The proxy failed to connect to replica 1: it is skipped, even though checks pass.
    mon.ban("shard0", 1, "connection refused")
    mon.ban("shard0", 7, "no such replica")  # ignored
    await mon.check_once()
    assert {mon.choose("shard0") for _ in range(4)} == {0}
    r = mon.status()["shard0"]["replicas"][1]
    assert r["reason"] == "banned" and r["ban_reason"] == "connection refused"
    assert r["last_error"] is None  # its own checks pass


async def test_background_polling(cluster2r, monitor_factory):
    mon = monitor_factory(cluster_catalog(cluster2r), interval=0.1, max_lag=5.0)
    await mon.start()
    deadline = time.monotonic() + 10
    while mon.choose("shard0") is None:
        assert time.monotonic() < deadline, mon.status()
        await asyncio.sleep(0.05)
    count = ("SELECT count(*) FROM pg_stat_activity"
             " WHERE application_name = 'pgshard-replica-monitor'")
    primary = cluster2r.shards[0].primary
    assert int(primary.psql(count)) == 1  # one persistent connection per node
    await mon.stop()
    while int(primary.psql(count)) != 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
