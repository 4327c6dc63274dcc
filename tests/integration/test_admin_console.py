"""The admin console (`psql -d pgshard` as one of admin_users) against a busy proxy: SHOW
POOLS/CLIENTS/SERVERS/STATS/SHARDS/CONFIG with psql and psycopg, PAUSE/RESUME holding new
transactions, KILL closing a client, RELOAD, clear errors for anything else and for users
not listed."""

from __future__ import annotations

import asyncio
import subprocess

import asyncpg
import psycopg
import pytest

from pgshard.config import to_toml
from tests.fixtures.proxy import ProxyProcess, env_without_pg
from tests.integration.conftest import _shards

pytestmark = pytest.mark.integration

TABLE = "adm_t"


@pytest.fixture(scope="module")
def console_proxy(pg_cluster):
    for s in pg_cluster.shards:
        s.primary.psql(f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id int PRIMARY KEY)")
    cfg = {"proxy": {"database": "app", "pool_size": 4, "admin_users": ["ops"]},
           "users": [{"name": "app", "password": "app-secret"},
                     {"name": "ops", "password": "ops-secret"}],
           "shards": _shards(pg_cluster), "tables": [{"name": TABLE, "shard_key": "id"}]}
    with ProxyProcess(cfg) as p:
        yield p


def console(proxy, **kw) -> psycopg.Connection:
    return psycopg.connect(proxy.dsn("ops", "ops-secret", "pgshard"), **kw)


def rows(conn, sql) -> list[dict]:
    cur = conn.execute(sql)
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def psql(proxy, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(["psql", proxy.dsn("ops", "ops-secret", "pgshard"), "-X", "-A",
                           "-F", "|", "-c", sql], capture_output=True, text=True, timeout=30,
                          env=env_without_pg())


async def test_show_commands_on_a_busy_proxy(console_proxy):
    proxy = console_proxy
    idle = await asyncpg.connect(proxy.dsn(), server_settings={"application_name": "idler"})
    busy = await asyncpg.connect(proxy.dsn(), server_settings={"application_name": "worker"})
    try:
        await busy.execute("BEGIN")
        await busy.execute(f"INSERT INTO {TABLE} VALUES (1) ON CONFLICT DO NOTHING")
        with console(proxy, autocommit=True) as c:
            clients = {r["application_name"]: r for r in rows(c, "SHOW CLIENTS")}
            assert clients["idler"]["state"] == "idle" and clients["idler"]["shard"] is None
            worker = clients["worker"]
            assert worker["state"] == "idle in transaction" and worker["user"] == "app"
            assert worker["shard"] in ("shard0", "shard1") and worker["server_pid"]
            assert not worker["pinned"]
            assert any(r["database"] == "pgshard" and r["state"] == "console"
                       for r in clients.values())

            servers = rows(c, "SHOW SERVERS")
            mine = [s for s in servers if s["client_pid"] == worker["pid"]]
            assert len(mine) == 1 and mine[0]["pid"] == worker["server_pid"]
            assert mine[0]["txn_status"] == "T" and mine[0]["shard"] == worker["shard"]

            pools = rows(c, "SHOW POOLS")
            pool = [p for p in pools if p["shard"] == worker["shard"] and p["role"] == "primary"]
            assert pool and pool[0]["sv_active"] >= 1 and pool[0]["cl_active"] >= 1
            assert pool[0]["pool_size"] == 4 and pool[0]["paused"] is False

            stats = rows(c, "SHOW STATS")
            assert sum(s["total_acquired"] for s in stats) >= 1
            shards = rows(c, "SHOW SHARDS")
            assert [s["name"] for s in shards] == ["shard0", "shard1"]
            assert all(s["owns_ranges"] and s["vnodes"] > 0 for s in shards)
            assert all("secret" not in (s["primary"] or "") for s in shards)
            cfg = {r["key"]: r for r in rows(c, "SHOW CONFIG")}
            assert cfg["pool_size"]["value"] == "4" and cfg["pool_size"]["changeable"]
            assert cfg["port"]["changeable"] is False
            assert "ops-secret" not in str(cfg)

            with pytest.raises(psycopg.errors.SyntaxError) as err:
                c.execute("SELECT * FROM accounts")
            assert "not an admin console command" in str(err.value)
            assert rows(c, "SHOW VERSION")[0]["version"].startswith("pgshard")
        await busy.execute("COMMIT")
    finally:
        await idle.close()
        await busy.close()

    # psql: the same tables, and several commands in one query string.
    out = psql(proxy, "SHOW POOLS")
    assert out.returncode == 0, out.stderr
    header = out.stdout.splitlines()[0].split("|")
    assert header[:6] == ["database", "user", "shard", "role", "cl_active", "cl_waiting"]
    out = psql(proxy, "SHOW SHARDS; SHOW HELP")
    assert out.returncode == 0 and "shard1" in out.stdout and "RELOAD" in out.stdout
    out = psql(proxy, "DROP TABLE x")
    assert out.returncode != 0 and "not an admin console command" in out.stderr


async def test_only_admin_users_get_the_console(console_proxy):
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(console_proxy.dsn("app", "app-secret", "pgshard"))
    assert "may not use the admin console" in str(err.value)
    # psycopg's default (a transaction opened by BEGIN) works too: BEGIN/COMMIT are no-ops.
    with console(console_proxy) as c:
        assert rows(c, "SHOW SHARDS")
        c.commit()


async def test_pause_resume_and_kill(console_proxy):
    proxy = console_proxy
    app = await asyncpg.connect(proxy.dsn())
    victim = await asyncpg.connect(proxy.dsn(), server_settings={"application_name": "victim"})
    try:
        with console(proxy, autocommit=True) as c:
            c.execute("PAUSE")
            assert all(p["paused"] for p in rows(c, "SHOW POOLS") if p["role"] == "primary")
            waiting = asyncio.ensure_future(app.fetchval(f"SELECT count(*) FROM {TABLE} "
                                                         "WHERE id = 1"))
            await asyncio.sleep(1.0)
            assert not waiting.done()          # held while paused
            c.execute("RESUME")
            assert await asyncio.wait_for(waiting, 10) in (0, 1)

            c.execute("PAUSE shard0")
            assert {s["name"]: s["paused"] for s in rows(c, "SHOW SHARDS")} == \
                {"shard0": True, "shard1": False}
            c.execute("RESUME shard0")
            with pytest.raises(psycopg.errors.SyntaxError):
                c.execute("PAUSE nosuchshard")

            pid = next(r["pid"] for r in rows(c, "SHOW CLIENTS")
                       if r["application_name"] == "victim")
            c.execute(f"KILL {pid}")
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError,
                                ConnectionError)):
                await victim.fetchval("SELECT 1")
            assert all(r["application_name"] != "victim" for r in rows(c, "SHOW CLIENTS"))
            assert await app.fetchval("SELECT 1") == 1
    finally:
        await app.close()
        victim.terminate()


async def test_reload_from_the_console(console_proxy):
    proxy = console_proxy
    cfg = dict(proxy.config)
    cfg["proxy"] = {**cfg["proxy"], "pool_size": 6}
    proxy.config_path.write_text(to_toml(cfg))
    notices = []
    with console(proxy, autocommit=True) as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("RELOAD")
        assert any("proxy.pool_size: 4 -> 6" in n for n in notices), notices
        assert {r["key"]: r["value"] for r in rows(c, "SHOW CONFIG")}["pool_size"] == "6"
