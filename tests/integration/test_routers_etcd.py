"""Routers sharing one etcd: they converge on a catalog change within a second, register with
the version they serve, elect one manager, and stop routing when etcd goes away (once their
lease may have lapsed), routing again once it is back."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import asyncpg
import pytest

from tests.fixtures.etcd import running_etcd
from tests.fixtures.proxy import ProxyProcess
from tests.fixtures.runtime import ADMIN_PASSWORD, Api, running_runtime, runtime_config


@pytest.fixture(scope="module")
def etcd():
    with running_etcd() as server:
        yield server


async def eventually(check, timeout: float, interval: float = 0.05):
    """The first truthy result of `check()` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        await asyncio.sleep(interval)


async def get_json(session, url: str):
    async with session.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def query(port: int, sql: str):
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="app",
                                 password="app-secret", database="app", timeout=5)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_routers_converge_register_and_survive_etcd_loss(pg_cluster, etcd):
    cluster = f"r{uuid.uuid4().hex[:10]}"
    for s in pg_cluster.shards:
        s.primary.psql("CREATE TABLE IF NOT EXISTS conv_t (id int)")
    cfg = runtime_config(pg_cluster, store=etcd.url, cluster=cluster)
    # B is a real `pgshard serve` process (a second manager candidate), C a stateless router.
    b_cfg = runtime_config(pg_cluster, store=etcd.url, cluster=cluster)
    del b_cfg["proxy"]["port"]  # ProxyProcess picks free ports it can wait on
    del b_cfg["sidecar"]["port"]
    async with running_runtime(cfg) as a, running_runtime(cfg, role="router") as c, \
            aiohttp.ClientSession() as session:
        b = ProxyProcess(b_cfg)
        b.start()
        try:
            b_url = f"http://127.0.0.1:{b.api_port}"
            api = Api(a.api_url, session)
            api.tokens["admin"] = await api.login("admin", ADMIN_PASSWORD)

            async def routers():
                status, body, _ = await api.request("GET", "/api/v1/routers", role="admin")
                assert status == 200
                return body

            body = await eventually(lambda: _if(routers(), lambda b: len(b["routers"]) == 3), 5)
            by_role = {r["id"]: r for r in body["routers"]}
            assert by_role[a.node_id]["leader"] and body["leader"] == a.node_id
            assert by_role[c.node_id]["role"] == "router" and by_role[c.node_id]["api"]
            assert all(r["up_to_date"] for r in body["routers"])
            # The stateless router serves health and metrics, not the management API.
            status, health = await get_json(session, c.api_url + "/health")
            assert status == 200 and health["role"] == "router" and not health["leader"]
            status, _ = await get_json(session, c.api_url + "/api/v1/shards")
            assert status == 404

            # One change through A's API reaches every router within a second.
            start = time.monotonic()
            status, change, _ = await api.request("PUT", "/api/v1/tables/conv_t", role="admin",
                                                  json={"shard_key": "id"})
            assert status == 201, change
            version = change["catalog_version"]

            async def b_version():
                return (await get_json(session, b_url + "/health"))[1]["catalog_version"]

            async def converged():
                return (a.proxy.catalog.version == version and c.proxy.catalog.version == version
                        and await b_version() == version)

            await eventually(converged, 1.0, 0.01)
            elapsed = time.monotonic() - start
            assert elapsed < 1.0
            body = await eventually(lambda: _if(routers(), lambda b: all(
                r["catalog_version"] == version for r in b["routers"])), 1.0)
            assert all(r["up_to_date"] for r in body["routers"])
            assert c.proxy.catalog.key_column("conv_t") == "id"

            # etcd goes away: every router serves its catalog until its lease may have
            # lapsed, then refuses statements (57P03, pgshard.control.lease_gate), and says so.
            etcd.kill()
            try:
                async def degraded():
                    _, ha = await get_json(session, c.api_url + "/health")
                    _, hb = await get_json(session, b_url + "/health")
                    return (ha["status"] == "degraded" and hb["status"] == "degraded"
                            and ha["store"]["reachable"] is False)

                await eventually(degraded, 10, 0.2)
                _, hc = await get_json(session, c.api_url + "/health")
                assert hc["catalog_version"] == version and hc["serving_last_known_catalog"]
                async with session.get(c.api_url + "/metrics") as resp:
                    assert "pgshard_store_reachable 0.0" in await resp.text()
                seen: dict[int, str] = {}

                async def refused():
                    for port in (c.proxy.port, b.port, a.proxy.port):
                        if seen.get(port) == "57P03":
                            continue   # once refusing, a router refuses until etcd is back
                        try:
                            await query(port, "SELECT 7 /* shard: shard1 */")
                            seen[port] = "served"
                        except asyncpg.PostgresError as exc:
                            assert exc.sqlstate == "57P03", exc
                            assert etcd.endpoint in exc.message
                            seen[port] = exc.sqlstate
                    return all(v == "57P03" for v in seen.values()) and len(seen) == 3

                try:
                    await eventually(refused, 10, 0.2)
                except AssertionError:
                    raise AssertionError(f"not refused by every router: {seen}; the "
                                         f"subprocess router's log: {b.log()[-3000:]}") from None
                _, hc = await get_json(session, c.api_url + "/health")
                assert hc["routing"] is False
                assert any("lease" in d for d in hc["degraded"])
                # Management calls that need the store fail cleanly.
                status, problem, _ = await api.request("GET", "/api/v1/shards", role="admin")
                assert status == 503 and problem["status"] == 503
            finally:
                etcd.start()

            async def recovered():
                _, hc = await get_json(session, c.api_url + "/health")
                _, hb = await get_json(session, b_url + "/health")
                if not (hc["store"]["reachable"] and hb["store"]["reachable"]):
                    return False
                status, body, _ = await api.request("GET", "/api/v1/routers", role="admin")
                return status == 200 and len(body["routers"]) == 3 and body

            body = await eventually(recovered, 15, 0.2)
            assert sum(1 for r in body["routers"] if r["leader"]) == 1

            async def serving():
                for port in (c.proxy.port, b.port, a.proxy.port):
                    try:
                        assert await query(port, "SELECT 7 /* shard: shard1 */") == 7
                    except asyncpg.PostgresError:
                        return False
                return True

            await eventually(serving, 10, 0.2)
            assert (await get_json(session, c.api_url + "/health"))[1]["routing"] is True
        finally:
            b.stop()


async def _if(coro, pred):
    value = await coro
    return value if pred(value) else None


async def test_manager_election_hands_over(pg_cluster, etcd):
    cluster = f"e{uuid.uuid4().hex[:10]}"
    cfg = runtime_config(pg_cluster, store=etcd.url, cluster=cluster)
    async with running_runtime(cfg) as first:
        async with running_runtime(cfg) as second:
            assert first.plane.membership.is_leader
            assert not second.plane.membership.is_leader
            await first.stop()
            start = time.monotonic()

            async def took_over():
                return second.plane.membership.is_leader

            await eventually(took_over, 3)
            assert time.monotonic() - start < 3


async def test_router_registers_again_after_its_lease_is_lost(pg_cluster, etcd):
    cluster = f"l{uuid.uuid4().hex[:10]}"
    cfg = runtime_config(pg_cluster, store=etcd.url, cluster=cluster)
    async with running_runtime(cfg, role="router") as router:
        store = router.store
        assert await store.get(f"routers/{router.node_id}") is not None
        # The lease vanishes (as after a long partition): the registration goes with it...
        await router.plane.membership._lease.revoke()
        assert await store.get(f"routers/{router.node_id}") is None

        async def registered():
            return await store.get(f"routers/{router.node_id}")

        # ...and the next heartbeat (every ttl/3) notices and registers again.
        kv = await eventually(registered, 3)
        assert b'"catalog_version": 1' in kv.value
        assert router.plane.status.reachable
