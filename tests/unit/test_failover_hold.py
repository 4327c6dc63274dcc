"""The router side of a failover without servers: a catalog that moves a shard's primary
closes the pools to the old address and installs a successor pool for the same key (the
DSN's password, a user's own server password kept); a held shard's primary pools hand out
nothing; replica pools whose address changed are closed."""

from __future__ import annotations

import dataclasses

from pgshard.config import UserConfig, config_from_dict
from pgshard.proxy.listener import Proxy
from pgshard.ring.catalog import Catalog, Shard

OLD = "postgresql://pgshard:old-pw@127.0.0.1:5001/app"
NEW = "postgresql://pgshard:new-pw@127.0.0.1:5002/app"
OTHER = "postgresql://pgshard:pw@127.0.0.1:5003/app"


def catalog(primary: str, replicas=(), hold: str = "") -> Catalog:
    return Catalog.initial([Shard("s0", primary, tuple(replicas), hold=hold),
                            Shard("s1", OTHER)], {})


async def test_moved_primary_gets_a_successor_pool():
    proxy = Proxy(config_from_dict({"ha": {"failover_hold": 3}}), catalog(OLD, (NEW,)))
    own = UserConfig(name="own", password="x", server_password="own-pw", pool_size=2)
    shared = proxy.pool_for("s0", None)
    mine = proxy.pool_for("s0", own)
    replica = proxy.pool_for("s0", None, "replica:0")
    untouched = proxy.pool_for("s1", None)
    assert shared.hold is proxy.failover_hold and not shared.paused
    assert (shared.port, shared.password, mine.password) == (5001, "old-pw", "own-pw")

    moved = dataclasses.replace(proxy.catalog.evolve(), shards=(
        Shard("s0", NEW, (), fenced=(OLD,)), Shard("s1", OTHER)))
    proxy.set_catalog(moved)
    assert shared.closed and mine.closed and replica.closed and not untouched.closed
    successor = proxy.pools[shared.key]
    assert (successor.host, successor.port, successor.password) == ("127.0.0.1", 5002, "new-pw")
    assert proxy.pools[mine.key].password == "own-pw"   # a user's own credentials stay
    assert replica.key not in proxy.pools
    assert proxy.pool_for("s0", None) is successor
    assert successor.hold is proxy.failover_hold


async def test_held_shard_hands_out_no_server():
    proxy = Proxy(config_from_dict({}), catalog(OLD, (NEW,)))
    pool = proxy.pool_for("s0", None)
    proxy.set_catalog(dataclasses.replace(proxy.catalog.evolve(),
                                          shards=(Shard("s0", OLD, (NEW,), hold="switchover"),
                                                  Shard("s1", OTHER))))
    assert pool.paused and not pool.closed and pool.try_acquire() is None
    assert not proxy.pool_for("s1", None).paused
    proxy.set_catalog(dataclasses.replace(proxy.catalog.evolve(),
                                          shards=(Shard("s0", OLD, (NEW,)), Shard("s1", OTHER))))
    assert not pool.paused


async def test_hold_on_a_refused_primary_ends_in_08006_naming_the_shard():
    import time

    import pytest

    from pgshard.cluster import free_port
    from pgshard.proxy.failover_hold import ShardUnavailable

    dead = f"postgresql://pgshard:pw@127.0.0.1:{free_port()}/app"
    proxy = Proxy(config_from_dict({"ha": {"failover_hold": 0.5}}),
                  Catalog.initial([Shard("s0", dead, (NEW,)), Shard("s1", dead.replace(
                      "/app", "/other"))], {}))
    t0 = time.monotonic()
    with pytest.raises(ShardUnavailable) as ei:
        await proxy.pool_for("s0", None).acquire()
    assert time.monotonic() - t0 >= 0.45     # held, retried, then given up
    assert ei.value.sqlstate == "08006" and 'shard "s0"' in ei.value.message
    assert "failover_hold (0.5s)" in ei.value.message
    assert proxy.failover_hold.expired == 1 and proxy.failover_hold.waiting == 0
    # A shard with no replica expects no failover: its error comes at once, not held.
    with pytest.raises(Exception) as ei:
        await proxy.pool_for("s1", None).acquire()
    assert ei.value.sqlstate == "08006" and not isinstance(ei.value, ShardUnavailable)
    assert proxy.failover_hold.expired == 1 and proxy.failover_hold.released == 0
