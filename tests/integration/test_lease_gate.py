"""A router cut off from the metadata store stops routing once its lease may have lapsed
(57P03, naming the store) and recovers with the store's current catalog; the manager's fence
wait counts such a router gone only after its lease is over, and by then it refuses.

Real etcd; the router reaches it through a TCP forwarder the test cuts and restores, so the
manager keeps the store while the router loses it."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import asyncpg
import pytest

from pgshard.control.lease_gate import GRACE, SERVE_SHARE, LeaseGate, sentinel
from pgshard.reshard import routers
from pgshard.ring.catalog import Fence
from tests.fixtures.etcd import running_etcd
from tests.fixtures.runtime import running_runtime, runtime_config

TTL = 2.0


class Forwarder:
    """127.0.0.1:port -> target, that can be cut (every connection closed, new ones refused)
    and restored."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.cut = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _conn(self, reader, writer) -> None:
        if self.cut:
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_w}

        async def pipe(r, w):
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        self.writers -= {writer, up_w}

    def sever(self) -> None:
        self.cut = True
        for w in list(self.writers):
            w.transport.abort()

    async def close(self) -> None:
        self.sever()
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture(scope="module")
def etcd():
    with running_etcd() as server:
        yield server


async def select_one(conn) -> int | str:
    """1, or the SQLSTATE of the refusal."""
    try:
        return await conn.fetchval("SELECT 1 /* shard: shard0 */")
    except asyncpg.PostgresError as exc:
        return exc.sqlstate


async def test_cut_off_router_refuses_then_recovers(pg_cluster, etcd):
    fwd = Forwarder(etcd.client_port)
    port = await fwd.start()
    cluster = f"g{uuid.uuid4().hex[:10]}"
    for s in pg_cluster.shards:
        s.primary.psql("CREATE TABLE IF NOT EXISTS gate_t (id bigint PRIMARY KEY)")
    tables = [{"name": "gate_t", "shard_key": "id"}]
    cfg = runtime_config(pg_cluster, store=etcd.url, cluster=cluster, lease_ttl=TTL,
                         tables=tables)
    rcfg = runtime_config(pg_cluster, store=f"etcd://127.0.0.1:{port}", cluster=cluster,
                          lease_ttl=TTL, tables=tables)
    try:
        async with running_runtime(cfg) as mgr, running_runtime(rcfg, role="router") as rt:
            gate: LeaseGate = rt.proxy.lease_gate
            conn = await asyncpg.connect(host="127.0.0.1", port=rt.proxy.port, user="app",
                                         password="app-secret", database="app")
            try:
                assert await select_one(conn) == 1
                # A fence version the cut-off router never sees: the manager's wait must
                # outlast the router's lease even with a timeout shorter than it.
                fenced = await mgr.plane.catalog_ops.update(
                    lambda c: c.evolve(fences=(Fence(0, 1000, "testjob"),)))
                await asyncio.sleep(0.3)
                assert rt.proxy.catalog.version == fenced.version   # acked by both
                await routers.wait_acks(mgr.store, fenced.version, 0.5)
                lifted = await mgr.plane.catalog_ops.update(lambda c: c.evolve(fences=()))
                while rt.proxy.catalog.version < lifted.version:
                    await asyncio.sleep(0.02)
                assert await select_one(conn) == 1

                # Closed for a moment (as when the event loop was held up past the refresh):
                # a statement waits, running nowhere, until the lease is renewed and the
                # catalog re-read, then runs.
                gate.close()
                assert gate.closed
                assert await select_one(conn) == 1
                assert not gate.closed

                cut_at = time.monotonic()
                fwd.sever()
                fenced = await mgr.plane.catalog_ops.update(
                    lambda c: c.evolve(fences=(Fence(0, 1000, "testjob"),)))
                # Until the lease may lapse the router serves; after, it refuses: no statement
                # that reached it later ran (each waits GRACE for the lease, then fails).
                first_refusal, last_ok = None, None
                while time.monotonic() - cut_at < TTL + GRACE + 1:
                    started = time.monotonic()
                    got = await select_one(conn)
                    if got != 1:
                        assert got == "57P03", got
                        first_refusal = time.monotonic() - cut_at
                        break
                    last_ok = started - cut_at
                    await asyncio.sleep(0.05)
                assert first_refusal is not None
                assert first_refusal <= TTL * SERVE_SHARE + GRACE + 0.5
                assert last_ok is None or last_ok <= TTL * SERVE_SHARE + 0.05
                with pytest.raises(asyncpg.PostgresError) as err:
                    await conn.fetchval("SELECT count(*) FROM pg_class")
                assert err.value.sqlstate == "57P03"
                assert f"127.0.0.1:{port}" in err.value.message
                assert "lost its lease" in err.value.message
                # A COPY split by key over the shards is refused too.
                with pytest.raises(asyncpg.PostgresError) as err:
                    await conn.copy_records_to_table("gate_t", records=[(1,), (2,), (3,)])
                assert err.value.sqlstate == "57P03"
                assert rt.proxy.catalog.version < fenced.version   # it never saw the fence

                # The manager's wait ends only once the router's lease is over in the store,
                # when the router has long stopped routing.
                await routers.wait_acks(mgr.store, fenced.version, 0.5)
                assert gate.closed
                assert time.monotonic() - cut_at >= TTL * SERVE_SHARE
                assert await mgr.store.get(f"routers/{rt.node_id}") is None
                lifted = await mgr.plane.catalog_ops.update(lambda c: c.evolve(fences=()))

                # The store comes back: it registers again with the store's catalog, then
                # serves.
                fwd.cut = False
                deadline = time.monotonic() + 20
                while (got := await select_one(conn)) != 1:
                    assert got == "57P03"
                    assert time.monotonic() < deadline, "the router did not recover"
                    await asyncio.sleep(0.1)
                assert rt.proxy.catalog.version >= lifted.version
                assert not rt.proxy.catalog.fences
                kv = await mgr.store.get(f"routers/{rt.node_id}")
                assert kv is not None and f'"catalog_version": {lifted.version}'.encode() \
                    in kv.value
                assert (await conn.fetchval("SELECT count(*) FROM pg_class")) > 0
                await conn.execute("DELETE FROM gate_t")
                await conn.copy_records_to_table("gate_t", records=[(1,), (2,), (3,)])
                assert await conn.fetchval("SELECT count(*) FROM gate_t") == 3
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
    finally:
        await fwd.close()


def test_sentinel_keeps_version_and_fences_everything(pg_cluster):
    from pgshard.config import config_from_dict
    cat = config_from_dict(runtime_config(pg_cluster)).catalog
    s = sentinel(cat)
    assert s.version == cat.version and s.ring == cat.ring
    assert s.is_fenced(0) and s.is_fenced(2**32 - 1)
