"""Several logical databases through one proxy, on real servers: a client of a second
database sees only that database's tables and rows (checked on each primary directly),
transaction pooling keeps the databases' server connections apart (a pool of one each),
an unknown database or one missing on the shards gets 3D000, and `pgshard demo --database
extra` serves app and extra."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg
import psycopg
import pytest

from pgshard.cluster import LocalCluster, free_port
from tests.fixtures.clusters import cluster_dir, temp_cluster
from tests.fixtures.proxy import PGSHARD, ProxyProcess
from tests.integration.conftest import _shards

USER = {"name": "app", "password": "app-secret"}
OPS = {"name": "ops", "password": "ops-secret"}   # the admin console's user
TABLES = [{"name": "items", "shard_key": "id"}, {"name": "extra_only", "shard_key": "id"},
          {"name": "reordered", "shard_key": "id"}]


@pytest.fixture(scope="module")
def cluster():
    with temp_cluster(shards=2, replicas=0) as c:
        c.add_database("extra")
        c.add_database("extra")   # idempotent: a present database is kept
        c.add_database("reports_db")
        yield c


@pytest.fixture(scope="module")
def proxy(cluster):
    cfg = {"proxy": {"database": "app", "pool_size": 1, "pool_mode": "transaction",
                     "query_wait_timeout": 20, "admin_users": ["ops"]},
           "sidecar": {"admin_password": "adm-secret"},
           "databases": [{"name": "extra"}, {"name": "missing"},
                         {"name": "reports", "dbname": "reports_db", "pool_mode": "session"}],
           "users": [USER, OPS], "shards": _shards(cluster), "tables": TABLES}
    with ProxyProcess(cfg) as p:
        yield p


def on_primary(cluster, shard: str, database: str, sql: str) -> str:
    node = next(s.primary for s in cluster.shards if s.name == shard)
    return node.psql(sql, database=database)


async def test_each_database_has_its_own_tables_and_rows(cluster, proxy):
    app = await asyncpg.connect(proxy.dsn(database="app"))
    extra = await asyncpg.connect(proxy.dsn(database="extra"))
    try:
        assert await app.fetchval("SELECT current_database()") == "app"
        assert await extra.fetchval("SELECT current_database()") == "extra"
        for conn in (app, extra):
            await conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, v text NOT NULL)")
        await extra.execute("CREATE TABLE extra_only (id bigint PRIMARY KEY)")
        await app.executemany("INSERT INTO items (id, v) VALUES ($1, 'app')", [(i,) for i in range(40)])
        await extra.executemany("INSERT INTO items (id, v) VALUES ($1, 'extra')",
                                [(i,) for i in range(100, 130)])
        await extra.execute("INSERT INTO extra_only VALUES (1), (2), (3)")
        # Through the proxy: each database's own rows, merged over both shards.
        assert await app.fetch("SELECT DISTINCT v FROM items") == [("app",)]
        assert await app.fetchval("SELECT count(*) FROM items") == 40
        assert await extra.fetchval("SELECT count(*) FROM items WHERE v = 'extra'") == 30
        assert await extra.fetchval("SELECT count(*) FROM items") == 30
        assert await extra.fetchval("SELECT v FROM items WHERE id = 105") == "extra"
        assert await extra.fetchval("SELECT v FROM items WHERE id = 5") is None
        with pytest.raises(asyncpg.UndefinedTableError):
            await app.fetch("SELECT * FROM extra_only")
    finally:
        await app.close()
        await extra.close()
    # On each primary directly: the rows landed in their own database, on both shards.
    counts = {}
    for shard in ("shard0", "shard1"):
        for db in ("app", "extra"):
            counts[shard, db] = on_primary(cluster, shard, db,
                                           "SELECT count(*), string_agg(DISTINCT v, ',') "
                                           "FROM items")
        assert on_primary(cluster, shard, "app", "SELECT to_regclass('extra_only') IS NULL") == "t"
        assert int(on_primary(cluster, shard, "extra", "SELECT count(*) FROM extra_only")) >= 0
        # Each database carries the token hash, the same function as app's.
        assert on_primary(cluster, shard, "extra", "SELECT pgshard.hash('42')") == \
            on_primary(cluster, shard, "app", "SELECT pgshard.hash('42')")
    assert sum(int(counts[s, "app"].split("|")[0]) for s in ("shard0", "shard1")) == 40
    assert sum(int(counts[s, "extra"].split("|")[0]) for s in ("shard0", "shard1")) == 30
    assert all(counts[s, "app"].endswith("|app") for s in ("shard0", "shard1"))
    assert all(counts[s, "extra"].endswith("|extra") for s in ("shard0", "shard1"))
    assert sum(int(on_primary(cluster, s, "extra", "SELECT count(*) FROM extra_only"))
               for s in ("shard0", "shard1")) == 3


async def test_insert_without_columns_uses_each_databases_own_column_order(proxy):
    """The key's position in an INSERT without a column list is learned per database: the
    same table name may order its columns differently in each."""
    app = await asyncpg.connect(proxy.dsn(database="app"))
    extra = await asyncpg.connect(proxy.dsn(database="extra"))
    try:
        await app.execute("CREATE TABLE reordered (id bigint PRIMARY KEY, v text)")
        await extra.execute("CREATE TABLE reordered (v text, id bigint PRIMARY KEY)")
        for i in range(12):
            await app.execute(f"INSERT INTO reordered VALUES ({i}, 'app{i}')")
            await extra.execute(f"INSERT INTO reordered VALUES ('extra{i}', {i})")
        for i in range(12):   # found by key: each row sits on its key's shard
            assert await app.fetchval("SELECT v FROM reordered WHERE id = $1", i) == f"app{i}"
            assert await extra.fetchval("SELECT v FROM reordered WHERE id = $1", i) == \
                f"extra{i}"
    finally:
        await app.close()
        await extra.close()


async def test_a_cross_shard_transaction_in_a_second_database_commits_there(cluster, proxy):
    conn = await asyncpg.connect(proxy.dsn(database="extra"))
    try:
        async with conn.transaction():
            for i in range(200, 220):
                await conn.execute(f"INSERT INTO items (id, v) VALUES ({i}, 'twophase')")
    finally:
        await conn.close()
    per_shard = [int(on_primary(cluster, s, "extra",
                                "SELECT count(*) FROM items WHERE v = 'twophase'"))
                 for s in ("shard0", "shard1")]
    assert sum(per_shard) == 20 and all(per_shard), per_shard   # both shards took part
    for s in ("shard0", "shard1"):
        assert on_primary(cluster, s, "app", "SELECT count(*) FROM items WHERE v = 'twophase'") \
            == "0"
        assert on_primary(cluster, s, "postgres", "SELECT count(*) FROM pg_prepared_xacts") == "0"


async def test_transaction_pooling_keeps_each_databases_servers_apart(cluster, proxy):
    pin = " /* shard: shard0 */"
    who = "SELECT current_database(), pg_backend_pid()" + pin
    a = await asyncpg.connect(proxy.dsn(database="app"))
    b = await asyncpg.connect(proxy.dsn(database="extra"))
    c = await asyncpg.connect(proxy.dsn(database="app"))
    try:
        await a.execute("BEGIN")
        app_db, app_pid = await a.fetchrow(who)
        # app's one server is held by a's transaction: extra still has a server of its own.
        extra_db, extra_pid = await asyncio.wait_for(b.fetchrow(who), 10)
        assert (app_db, extra_db) == ("app", "extra") and extra_pid != app_pid
        # ... and a second app client waits for app's one server, not extra's.
        waiting = asyncio.ensure_future(c.fetchrow(who))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        assert tuple(await asyncio.wait_for(b.fetchrow(who), 10)) == ("extra", extra_pid)
        await a.execute("COMMIT")
        assert tuple(await asyncio.wait_for(waiting, 10)) == ("app", app_pid)
        # On the shard: the proxy holds one server per database (pool_size 1). Servers
        # of the earlier tests that were closed may still be exiting: wait for them.
        sql = ("SELECT datname, count(*), string_agg(pid::text, ',' ORDER BY pid) FROM "
               "pg_stat_activity WHERE usename = 'pgshard' AND backend_type = 'client backend' "
               "AND datname IN ('app', 'extra') AND pid <> pg_backend_pid() GROUP BY 1 ORDER BY 1")
        expected = f"app|1|{app_pid}\nextra|1|{extra_pid}"
        for _ in range(50):
            per_db = on_primary(cluster, "shard0", "postgres", sql)
            if per_db == expected:
                break
            await asyncio.sleep(0.2)
        assert per_db == expected
    finally:
        for conn in (a, b, c):
            await conn.close()


async def test_the_admin_console_names_each_pools_database(proxy):
    """A database served under a name of its own (dbname reports_db), in session pooling."""
    extra = await asyncpg.connect(proxy.dsn(database="reports"))
    try:
        assert await extra.fetchval("SELECT current_database() /* shard: shard1 */") == \
            "reports_db"
        with psycopg.connect(proxy.dsn("ops", "ops-secret", "pgshard")) as console:
            pools = console.execute("SHOW POOLS").fetchall()
            names = [d.name for d in console.execute("SHOW POOLS").description]
            pools = [dict(zip(names, r, strict=True)) for r in pools]
            by_db = {(p["database"], p["shard"]): p["pool_mode"] for p in pools}
            assert by_db[("reports", "shard1")] == "session"
            assert by_db[("app", "shard0")] == "transaction"
            cur = console.execute("SHOW CLIENTS")
            names = [d.name for d in cur.description]
            dbs = {dict(zip(names, r, strict=True))["database"] for r in cur.fetchall()}
            assert {"reports", "pgshard"} <= dbs
    finally:
        await extra.close()


async def test_an_unknown_database_is_3D000(proxy):
    with pytest.raises(asyncpg.InvalidCatalogNameError) as exc:
        await asyncpg.connect(proxy.dsn(database="nope"))
    assert str(exc.value).startswith('database "nope" does not exist')
    assert '"app", "extra", "missing", "reports"' in exc.value.hint
    with pytest.raises(psycopg.OperationalError) as exc2:
        psycopg.connect(proxy.dsn(database="nope"), connect_timeout=10)
    assert 'database "nope" does not exist' in str(exc2.value)


async def test_a_configured_database_missing_on_the_shards_is_refused_at_login(proxy):
    with pytest.raises(asyncpg.InvalidCatalogNameError) as exc:
        await asyncpg.connect(proxy.dsn(database="missing"))
    assert 'database "missing" does not exist' in str(exc.value)
    # The shard itself is not reported down for it, and the proxy still serves the others.
    health = _health(proxy)
    assert health["shards"]["shard0"]["primary_up"] is not False, health
    conn = await asyncpg.connect(proxy.dsn(database="extra"))
    try:
        assert await conn.fetchval("SELECT current_database()" " /* shard: shard1 */") == "extra"
    finally:
        await conn.close()


def _health(proxy) -> dict:
    """GET /health, once the sidecar listens (it starts after the proxy's port)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{proxy.api_port}/health",
                                        timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:   # 503 when degraded: still the facts
            return json.loads(exc.read())
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _api(proxy, method: str, path: str, body: dict, token: str | None = None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{proxy.api_port}{path}", method=method,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_resharding_is_not_refused_for_other_databases(proxy):
    """[[databases]] no longer block resharding (a job moves every database's rows:
    tests/e2e/test_reshard_databases.py); this request fails on its own precondition."""
    status, login = _api(proxy, "POST", "/api/v1/auth/login",
                         {"username": "admin", "password": "adm-secret"})
    assert status == 200, login
    status, problem = _api(proxy, "POST", "/api/v1/jobs",
                           {"kind": "split", "source": "shard0", "target": "shard1"},
                           login["token"])
    assert status == 409, problem
    assert "already owns vnodes" in problem["detail"], problem


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"demo exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.2)
    raise AssertionError(f"no {path} within {timeout}s")


def test_demo_serves_app_and_each_database_given():
    data_dir = Path(cluster_dir()) / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGSHARD_", "PG"))}
    proc = subprocess.Popen(
        [PGSHARD, "demo", "--data-dir", str(data_dir), "--shards", "2", "--replicas", "0",
         "--port", "0", "--api-port", str(free_port()), "--database", "extra"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        state = _wait_for(data_dir / "demo.json", proc, timeout=180)
        assert set(state["databases"]) == {"app", "extra"}
        assert state["databases"]["app"] == state["client_dsn"]
        with psycopg.connect(state["databases"]["extra"], autocommit=True) as extra, \
                psycopg.connect(state["databases"]["app"], autocommit=True) as app:
            assert extra.execute("SELECT current_database()").fetchone() == ("extra",)
            extra.execute("INSERT INTO accounts VALUES (1, 'ann', 10), (2, 'bob', 20), "
                          "(3, 'cy', 30)")
            assert extra.execute("SELECT sum(balance) FROM accounts").fetchone()[0] == 60
            assert app.execute("SELECT count(*) FROM accounts").fetchone() == (0,)
        # Directly on each primary: extra exists with the token hash and holds the rows.
        total = 0
        for shard in state["shards"]:
            dsn = shard["primary"].rsplit("/", 1)[0] + "/extra"
            with psycopg.connect(dsn) as direct:
                assert direct.execute("SELECT pgshard.hash('42')").fetchone()[0] is not None
                total += direct.execute("SELECT count(*) FROM accounts").fetchone()[0]
        assert total == 3
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output
        assert "Database extra" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        LocalCluster(data_dir / "cluster", shards=2, replicas=0).destroy()
        shutil.rmtree(data_dir.parent, ignore_errors=True)


async def test_pause_and_resume_one_logical_database(proxy):
    """PAUSE extra holds new transactions of extra only (app goes on); RESUME extra lets the
    held one through; SHOW POOLS says which pools are paused."""
    app = await asyncpg.connect(proxy.dsn())
    extra = await asyncpg.connect(proxy.dsn(database="extra"))
    try:
        with psycopg.connect(proxy.dsn("ops", "ops-secret", "pgshard"),
                             autocommit=True) as console:
            console.execute("PAUSE extra")
            try:
                cur = console.execute("SHOW POOLS")
                names = [d.name for d in cur.description]
                paused = {(r["database"], r["role"]): r["paused"] for r in
                          (dict(zip(names, row, strict=True)) for row in cur.fetchall())}
                assert paused[("extra", "primary")] is True
                assert paused[("app", "primary")] is False
                held = asyncio.ensure_future(extra.fetchval(
                    "SELECT count(*) FROM items WHERE id = 1"))
                assert await asyncio.wait_for(
                    app.fetchval("SELECT count(*) FROM items WHERE id = 1"), 10) >= 0
                await asyncio.sleep(0.5)
                assert not held.done()   # extra's statement waits for RESUME
            finally:
                console.execute("RESUME extra")
            assert await asyncio.wait_for(held, 10) >= 0
    finally:
        await app.close()
        await extra.close()
