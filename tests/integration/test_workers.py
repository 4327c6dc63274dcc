"""`pgshard serve --workers 2` as a real subprocess: connections land on both workers, a
CancelRequest (psql, psycopg, asyncpg) reaches the session's worker whichever worker the
kernel gives it to, /metrics sums both workers, SIGHUP and the console's RELOAD reload both,
a killed worker is restarted, SIGTERM drains and stops them all, and so does kill -9 of the
parent."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import asyncpg
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgshard.cluster import find_pg_bindir
from pgshard.config import to_toml
from tests.fixtures.proxy import ProxyProcess, env_without_pg
from tests.integration.conftest import _shards

pytestmark = pytest.mark.integration

SLEEP = "SELECT pg_sleep(30)"


def workers_config(pg_cluster, **proxy) -> dict:
    return {"proxy": {"database": "app", "pool_size": 4, "workers": 2, **proxy},
            "users": [{"name": "app", "password": "app-secret"}],
            "shards": _shards(pg_cluster, {"shard0"})}


async def scrape(proxy: ProxyProcess) -> dict[tuple[str, tuple], float]:
    """/metrics as (sample name, sorted labels) -> value."""
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{proxy.api_port}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def per_worker(metrics: dict, name: str) -> dict[str, float]:
    return {dict(labels)["worker"]: v for (n, labels), v in metrics.items() if n == name}


async def wait_until(pred, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = await pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def all_workers_up(proxy: ProxyProcess) -> dict:
    async def up():
        try:
            metrics = await scrape(proxy)
        except aiohttp.ClientError:
            return None
        return metrics if per_worker(metrics, "pgshard_worker_up") == {"0": 1, "1": 1} else None
    return await wait_until(up, what="both workers up")


def worker_pids(proxy: ProxyProcess) -> list[int]:
    pid = proxy.proc.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


async def test_connections_land_on_both_workers_and_metrics_are_summed(pg_cluster):
    with ProxyProcess(workers_config(pg_cluster)) as proxy:
        await all_workers_up(proxy)
        conns = [await asyncpg.connect(proxy.dsn()) for _ in range(40)]
        try:
            for i, c in enumerate(conns):
                assert await c.fetchval("SELECT $1::int", i) == i
        finally:
            for c in conns:
                await c.close()
        metrics = await scrape(proxy)
        accepted = per_worker(metrics, "pgshard_worker_client_connections_accepted_total")
        assert set(accepted) == {"0", "1"} and min(accepted.values()) > 0, accepted
        total = metrics[("pgshard_client_connections_accepted_total", ())]
        assert total == sum(accepted.values()) and total >= 40
        queries = sum(v for (n, _), v in metrics.items() if n == "pgshard_queries_total")
        assert queries >= 40


async def _psycopg_cancel(dsn: str, primary: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        task = asyncio.create_task(conn.execute(SLEEP))
        await _running(primary)
        await conn.cancel_safe()
        with pytest.raises(psycopg.errors.QueryCanceled):
            await task
        assert await (await conn.execute("SELECT 7")).fetchone() == (7,)


async def _asyncpg_cancel(dsn: str, primary: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        task = asyncio.create_task(conn.fetchval(SLEEP))
        await _running(primary)
        task.cancel()   # asyncpg sends a CancelRequest on a connection of its own
        with pytest.raises(asyncio.CancelledError):
            await task
        await _running(primary, count=0)   # cancelled on the shard, not left to sleep 30 s
        assert await conn.fetchval("SELECT 8") == 8
    finally:
        await conn.close()


async def _psql_cancel(dsn: str, primary: str) -> None:
    """psql sends a CancelRequest on SIGINT (Ctrl-C) and reports the cancelled statement."""
    psql = str(find_pg_bindir() / "psql")
    proc = await asyncio.create_subprocess_exec(
        psql, dsn, "-X", "-c", SLEEP, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env_without_pg())
    try:
        await _running(primary)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert b"canceling statement due to user request" in err, err


async def _running(primary: str, count: int = 1) -> None:
    direct = await asyncpg.connect(primary)
    try:
        async def seen():
            n = await direct.fetchval("SELECT count(*) FROM pg_stat_activity "
                                      "WHERE query = $1 AND state = 'active'", SLEEP)
            return n == count
        await wait_until(seen, timeout=20, what=f"{count} pg_sleep running")
    finally:
        await direct.close()


async def test_cancel_reaches_the_owning_worker(pg_cluster):
    primary = pg_cluster.describe()["shards"][0]["primary"]
    with ProxyProcess(workers_config(pg_cluster)) as proxy:
        await all_workers_up(proxy)
        paths: dict[str, float] = {}
        rounds = 0
        # Each cancel lands on a worker chosen by the kernel: repeat until both the local
        # and the forwarded path were taken (and at least 8 times).
        while rounds < 9 or min(paths.get("local", 0), paths.get("forwarded", 0)) == 0:
            assert rounds < 40, paths
            cancel = (_psycopg_cancel, _asyncpg_cancel, _psql_cancel)[rounds % 3]
            await cancel(proxy.dsn(), primary)
            rounds += 1
            metrics = await scrape(proxy)
            paths = {dict(labels)["path"]: v for (n, labels), v in metrics.items()
                     if n == "pgshard_cancel_requests_total"}
        assert paths["local"] + paths["forwarded"] == rounds


async def test_sighup_reloads_every_worker(pg_cluster):
    cfg = workers_config(pg_cluster)
    with ProxyProcess(cfg) as proxy:
        await all_workers_up(proxy)
        cfg["users"] = [*cfg["users"], {"name": "newbie", "password": "newbie-secret"}]
        proxy.config_path.write_text(to_toml(cfg))
        proxy.proc.send_signal(signal.SIGHUP)

        async def reloaded():
            return proxy.log().count("user newbie: added") >= 2
        await wait_until(reloaded, what="both workers reloaded")
        for _ in range(20):   # whichever worker each connection lands on
            c = await asyncpg.connect(proxy.dsn("newbie", "newbie-secret"))
            assert await c.fetchval("SELECT 1") == 1
            await c.close()
        accepted = per_worker(await scrape(proxy),
                              "pgshard_worker_client_connections_accepted_total")
        assert min(accepted.values()) > 0, accepted


async def test_killed_worker_restarts_and_sigterm_drains_all(pg_cluster):
    primary = pg_cluster.describe()["shards"][0]["primary"]
    direct = await asyncpg.connect(primary)
    await direct.execute("DROP TABLE IF EXISTS workers_drain; CREATE TABLE workers_drain (n int)")
    with ProxyProcess(workers_config(pg_cluster, shutdown_timeout=30, pool_size=10)) as proxy:
        await all_workers_up(proxy)
        pids = worker_pids(proxy)
        assert len(pids) == 2
        os.kill(pids[1], signal.SIGKILL)

        async def replaced():
            now = worker_pids(proxy)
            return len(now) == 2 and pids[1] not in now and now
        await wait_until(replaced, what="a new worker")
        await all_workers_up(proxy)
        assert "restarting it" in proxy.log()
        pids = worker_pids(proxy)

        # Open transactions on several connections (on both workers), then SIGTERM: each
        # worker drains, the transactions commit, then everything exits with status 0.
        conns = [await asyncpg.connect(proxy.dsn()) for _ in range(8)]
        for i, c in enumerate(conns):
            await c.execute("BEGIN")
            await c.execute(f"INSERT INTO workers_drain VALUES ({i})")
        proxy.proc.send_signal(signal.SIGTERM)

        async def draining():
            return proxy.log().count("draining: no new connections") >= 2
        await wait_until(draining, what="both workers draining")
        for c in conns:
            await c.execute("COMMIT")
            await c.close()
        proxy.proc.wait(30)
        assert proxy.proc.returncode == 0, proxy.log()
        assert all(gone(pid) for pid in pids)
    assert await direct.fetchval("SELECT count(*) FROM workers_drain") == 8
    await direct.execute("DROP TABLE workers_drain")
    await direct.close()


async def test_rest_execute_enters_through_either_worker(pg_cluster):
    """/v1/execute logs in to the proxy port as an internal user: whichever worker the
    kernel gives each of its connections to knows that login."""
    cfg = workers_config(pg_cluster)
    cfg["sidecar"] = {"admin_password": "admin-secret-pw", "execute_pool_size": 16}
    with ProxyProcess(cfg) as proxy:
        before = per_worker(await all_workers_up(proxy),
                            "pgshard_worker_client_connections_accepted_total")
        base = f"http://127.0.0.1:{proxy.api_port}"
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "/api/v1/auth/login", json={
                    "username": "admin", "password": "admin-secret-pw"}) as resp:
                assert resp.status == 200, await resp.text()
                token = (await resp.json())["token"]

            async def execute(i: int):
                async with http.post(base + "/v1/execute",
                                     headers={"Authorization": f"Bearer {token}"},
                                     json={"query": f"SELECT {i} AS n"}) as resp:
                    return resp.status, await resp.json()
            replies = await asyncio.gather(*(execute(i) for i in range(16)))
        for i, (status, body) in enumerate(replies):
            assert status == 200, body
            assert body["rows"] == [{"n": i}], body
        after = per_worker(await scrape(proxy), "pgshard_worker_client_connections_accepted_total")
        assert all(after[w] > before.get(w, 0) for w in ("0", "1")), (before, after)


async def test_console_reload_reloads_every_worker(pg_cluster):
    cfg = workers_config(pg_cluster, admin_users=["ops"])
    cfg["users"] = [*cfg["users"], {"name": "ops", "password": "ops-secret"}]
    with ProxyProcess(cfg) as proxy:
        await all_workers_up(proxy)
        cfg["users"] = [*cfg["users"], {"name": "later", "password": "later-secret"}]
        proxy.config_path.write_text(to_toml(cfg))
        console = await asyncpg.connect(proxy.dsn("ops", "ops-secret", database="pgshard"))
        try:
            await console.execute("RELOAD")   # on the worker this connection landed on
        finally:
            await console.close()

        async def reloaded():   # there, then on the other one through the parent
            return proxy.log().count("user later: added") >= 2
        await wait_until(reloaded, what="both workers reloaded")
        for _ in range(20):
            c = await asyncpg.connect(proxy.dsn("later", "later-secret"))
            assert await c.fetchval("SELECT 1") == 1
            await c.close()


async def test_workers_stop_when_the_parent_is_killed(pg_cluster):
    with ProxyProcess(workers_config(pg_cluster)) as proxy:
        await all_workers_up(proxy)
        pids = worker_pids(proxy)
        env = Path(f"/proc/{pids[0]}/environ").read_bytes().split(b"\0")
        run_dir = Path(next(e for e in env if e.startswith(b"PGSHARD_WORKER_DIR="))
                       .split(b"=", 1)[1].decode())
        assert (run_dir / "worker-1.sock").exists()
        proxy.proc.kill()
        proxy.proc.wait(10)

        async def all_gone():
            return all(gone(pid) for pid in pids)
        await wait_until(all_gone, what="the workers to stop after their parent")
        assert not run_dir.exists()   # the orphaned workers removed the parent's directory
