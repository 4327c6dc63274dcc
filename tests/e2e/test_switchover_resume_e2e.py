"""A switchover whose manager dies half way is finished or rolled back by the next one.

`pgshard serve` A leads and runs the switchover with PGSHARD_FAULT_SWITCHOVER_PHASE set: it
SIGKILLs itself once that phase's step had its effect (held: hold set on every router;
demoted: old primary stopped; promoting: target promoted, catalog not flipped; published:
catalog flipped, record not deleted). Manager B (in process, same store) routes a concurrent
write ledger; when A's lease lapses B takes it, finds the progress record and rolls back
(held, demoted: the old primary, restarted if stopped, is primary again), finishes
(promoting: the target is published) or only deletes the record (published: A flipped the
catalog and released the hold before it died). Afterwards: no acknowledged write missing, no
failed statement, one writable primary, the catalog names it, no hold, no record.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from pgshard.cluster import free_port
from pgshard.control import switchover_state
from pgshard.control.switchover import FAULT_ENV
from tests.e2e.test_failover_e2e import (
    DDL,
    Writers,
    client_dsn,
    config,
    rows_on,
    sync_recorded,
    until,
)
from tests.fixtures.clusters import temp_cluster
from tests.fixtures.proxy import ProxyProcess
from tests.fixtures.runtime import ADMIN_PASSWORD, Api, running_runtime

pytestmark = pytest.mark.integration


def writable(node) -> bool:
    return node.is_running() and node.psql("SELECT pg_is_in_recovery()") == "f"


@pytest.mark.parametrize("phase, outcome", [("held", "rollback"), ("demoted", "rollback"),
                                            ("promoting", "finish"), ("published", "cleanup")])
async def test_switchover_left_half_done_is_resumed(phase, outcome):
    with temp_cluster(shards=1, replicas=1, sync_replication=True) as cluster:
        cluster.shards[0].primary.psql(DDL)
        old, replica = cluster.shards[0].primary, cluster.shards[0].replicas[0]
        cfg = config(cluster)
        first = dict(cfg, proxy={**cfg["proxy"], "port": free_port()},
                     sidecar={**cfg["sidecar"], "port": free_port()}, node_id="manager-a")
        with ProxyProcess(first, env={FAULT_ENV: phase}) as a:
            async with aiohttp.ClientSession() as http:
                api_a = Api(f"http://127.0.0.1:{a.api_port}", http)
                deadline = time.monotonic() + 15
                while True:
                    try:
                        _, health, _ = await api_a.request("GET", "/health")
                        if health.get("leader"):
                            break
                    except aiohttp.ClientConnectionError:
                        pass  # the sidecar starts after the proxy's listener
                    assert time.monotonic() < deadline, a.log()
                    await asyncio.sleep(0.1)
                api_a.tokens["admin"] = await api_a.login("admin", ADMIN_PASSWORD)
                async with running_runtime(dict(cfg, node_id="manager-b")) as b:
                    await sync_recorded(b, ["shard0"])
                    writers = Writers(b, client_dsn(b))
                    writers.start()
                    await until(lambda: len(writers.acked.get("shard0", [])) > 50, 30,
                                lambda: f"writes: {writers.summary()}")
                    with pytest.raises(aiohttp.ClientError):
                        await api_a.request("POST", "/api/v1/shards/shard0/switchover",
                                            role="admin", json={})
                    a.proc.wait(10)
                    assert a.proc.returncode == -9, a.log()
                    killed = time.monotonic()
                    assert await switchover_state.load_all(b.store), "no progress record"
                    await until(lambda: b.plane.membership.is_leader, 30, "B's leadership")
                    shard = lambda: b.proxy.catalog.shard("shard0")  # noqa: E731
                    expected = old if outcome == "rollback" else replica
                    # (cleanup: A published; B only deletes the record it left.)
                    await until(lambda: not shard().hold and shard().primary == expected.dsn, 30,
                                lambda: f"the switchover {outcome}: {shard()}")
                    deadline = time.monotonic() + 30
                    while await switchover_state.load_all(b.store):
                        assert time.monotonic() < deadline, "the progress record is still there"
                        await asyncio.sleep(0.1)
                    resumed = time.monotonic() - killed
                    await until(lambda: writers.successes_after("shard0", time.monotonic()
                                                                - 0.5) >= 20, 30,
                                lambda: f"writes after the resume: {writers.summary()}")
                    await writers.finish()
                    print(f"\nswitchover killed at {phase}: {outcome} {resumed:.2f}s after the "
                          f"kill (lease_ttl {b.config.lease_ttl:g}s); {writers.summary()}; "
                          f"slowest statement {max(writers.latencies):.2f}s")

                    assert [n.name for n in (old, replica) if writable(n)] == [expected.name]
                    acked = writers.acked["shard0"]
                    missing = set(acked) - rows_on(expected, acked)
                    assert not missing, f"{len(missing)} acknowledged writes lost"
                    if outcome == "rollback":
                        assert shard().replicas == (replica.dsn,) and not shard().fenced
                        assert replica.psql("SELECT status FROM pg_stat_wal_receiver") \
                            == "streaming"
                    else:
                        assert shard().fenced == (old.dsn,)
                        assert shard().last_failover.kind == "switchover"
                        # Finished by B, or (cleanup) published by A before it died.
                        assert ("resumed" in shard().last_failover.reason) \
                            == (outcome == "finish")
                    # Held statements waited; none failed.
                    assert not writers.errors, list(writers.errors.values())[0][:5]
