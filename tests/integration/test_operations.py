"""Operator signals on a real `pgshard serve`: SIGHUP reloads the config (a user added, a pool
resized: both in force at once, logged; a broken file is reported and nothing dies), SIGTERM
drains (no new connections, idle clients told 57P01, a transaction in flight commits, then the
process exits), SIGINT stops at once (an open transaction rolls back)."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import asyncpg
import pytest

from pgshard.config import to_toml
from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import _shards

pytestmark = pytest.mark.integration


def base_config(pg_cluster, **proxy) -> dict:
    return {"proxy": {"database": "app", "pool_size": 4, "query_wait_timeout": 1, **proxy},
            "users": [{"name": "app", "password": "app-secret", "pool_size": 1}],
            "shards": _shards(pg_cluster, {"shard0"})}


async def wait_until(pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return False
    except OSError:
        return True


async def test_sighup_reloads_users_and_pool_sizes(pg_cluster):
    cfg = base_config(pg_cluster)
    with ProxyProcess(cfg) as proxy:
        a = await asyncpg.connect(proxy.dsn())
        b = await asyncpg.connect(proxy.dsn())
        try:
            await a.execute("BEGIN")
            await a.fetchval("SELECT 1")
            # app's own pool holds 1 server: a second transaction cannot get one.
            await b.execute("BEGIN")
            with pytest.raises(asyncpg.PostgresError) as err:
                await b.fetchval("SELECT 1")
            assert err.value.sqlstate == "53000"
            await b.execute("ROLLBACK")
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(proxy.dsn("newbie", "newbie-secret"))

            cfg["users"] = [{"name": "app", "password": "app-secret", "pool_size": 2},
                            {"name": "newbie", "password": "newbie-secret"}]
            cfg["proxy"]["slow_query_ms"] = 5000
            proxy.config_path.write_text(to_toml(cfg))
            proxy.proc.send_signal(signal.SIGHUP)
            await wait_until(lambda: "config reloaded" in proxy.log())
            log = proxy.log()
            assert "user newbie: added" in log and "user app: pool_size 1 -> 2" in log, log
            assert "proxy.slow_query_ms: -1 -> 5000" in log and "newbie-secret" not in log

            pid_a = await a.fetchval("SELECT pg_backend_pid()")
            await b.execute("BEGIN")
            assert await b.fetchval("SELECT pg_backend_pid()") != pid_a   # the second server
            await b.execute("ROLLBACK")
            newbie = await asyncpg.connect(proxy.dsn("newbie", "newbie-secret"))
            assert await newbie.fetchval("SELECT 2") == 2
            await newbie.close()

            # A broken file: reported, nothing applied, the process keeps serving.
            proxy.config_path.write_text("[proxy\nbroken = ")
            proxy.proc.send_signal(signal.SIGHUP)
            await wait_until(lambda: "config not reloaded" in proxy.log())
            assert proxy.alive()
            assert await a.fetchval("SELECT 3") == 3
            await a.execute("COMMIT")
        finally:
            await a.close()
            await b.close()


async def test_sigterm_drains_a_transaction_in_flight(pg_cluster):
    primary = pg_cluster.describe()["shards"][0]["primary"]
    direct = await asyncpg.connect(primary)
    await direct.execute("DROP TABLE IF EXISTS ops_drain; CREATE TABLE ops_drain (n int)")
    cfg = base_config(pg_cluster, shutdown_timeout=30)
    with ProxyProcess(cfg) as proxy:
        busy = await asyncpg.connect(proxy.dsn())
        idle = await asyncpg.connect(proxy.dsn())
        await busy.execute("BEGIN")
        await busy.execute("INSERT INTO ops_drain VALUES (1)")
        proxy.proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: refused(proxy.port))        # new connections are refused
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError, OSError)):
            await idle.fetchval("SELECT 1")                 # idle outside a transaction: closed
        assert proxy.alive()                                 # the transaction is still open
        await busy.execute("INSERT INTO ops_drain VALUES (2)")
        await busy.execute("COMMIT")
        proxy.proc.wait(20)
        assert proxy.proc.returncode == 0, proxy.log()
        assert "draining" in proxy.log()
        await busy.close()
        await idle.close()
    assert sorted(r[0] for r in await direct.fetch("SELECT n FROM ops_drain")) == [1, 2]
    await direct.execute("DROP TABLE ops_drain")
    await direct.close()


async def test_sigint_stops_at_once_and_rolls_back(pg_cluster):
    primary = pg_cluster.describe()["shards"][0]["primary"]
    direct = await asyncpg.connect(primary)
    await direct.execute("DROP TABLE IF EXISTS ops_fast; CREATE TABLE ops_fast (n int)")
    with ProxyProcess(base_config(pg_cluster, shutdown_timeout=60)) as proxy:
        c = await asyncpg.connect(proxy.dsn())
        await c.execute("BEGIN")
        await c.execute("INSERT INTO ops_fast VALUES (1)")
        proxy.proc.send_signal(signal.SIGINT)
        proxy.proc.wait(20)                                  # well before shutdown_timeout
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError, OSError)):
            await c.execute("COMMIT")
        c.terminate()
    await asyncio.sleep(0.5)
    assert await direct.fetchval("SELECT count(*) FROM ops_fast") == 0
    await direct.execute("DROP TABLE ops_fast")
    await direct.close()
