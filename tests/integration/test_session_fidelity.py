"""A session through the proxy behaves as one PostgreSQL session: what PostgreSQL's own
regression suite found the proxy got wrong (settings inside held-back transactions, the
values settings are replayed with, failed SETs, COMMIT AND CHAIN, session resets)."""

from __future__ import annotations

import asyncpg
import psycopg
import pytest

from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import USERS, _shards
from tests.integration.test_proxy_psql_pgbench import psql

ONE = {"name": "one", "password": "one-secret", "pool_size": 1}
SESSION = {"name": "sone", "password": "sone-secret", "pool_size": 1, "pool_mode": "session"}


@pytest.fixture(scope="module", params=["transaction", "session"])
def env(request, pg_cluster):
    cfg = {"proxy": {"database": "app", "pool_size": 2, "query_wait_timeout": 5},
           "users": USERS + [ONE, SESSION], "shards": _shards(pg_cluster, {"shard0"})}
    with ProxyProcess(cfg) as proxy:
        user = ("one", "one-secret") if request.param == "transaction" else \
            ("sone", "sone-secret")
        yield proxy, proxy.dsn(user=user[0], password=user[1])


def test_show_inside_a_held_back_transaction(env):
    _, dsn = env
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY, DEFERRABLE")
        assert c.execute("SHOW transaction_isolation").fetchone() == ("repeatable read",)
        assert c.execute("SHOW transaction_read_only").fetchone() == ("on",)
        c.execute("COMMIT")
        c.execute("BEGIN")
        c.execute("SET LOCAL work_mem = '5MB'")
        assert c.execute("SHOW work_mem").fetchone() == ("5MB",)
        c.execute("COMMIT")
        assert c.execute("SHOW work_mem").fetchone() != ("5MB",)


def test_set_inside_a_rolled_back_transaction_is_undone(env):
    _, dsn = env
    with psycopg.connect(dsn, autocommit=True) as c:
        before = c.execute("SHOW vacuum_cost_delay").fetchone()
        c.execute("BEGIN")
        c.execute("SET vacuum_cost_delay TO 60")
        assert c.execute("SHOW vacuum_cost_delay").fetchone() == ("60ms",)
        c.execute("SET datestyle = 'German'")
        c.execute("ROLLBACK")
        assert c.execute("SHOW vacuum_cost_delay").fetchone() == before
        assert c.execute("SHOW datestyle").fetchone() != ("German, DMY",)


async def test_partial_datestyle_is_replayed_as_the_server_reported_it(env):
    """`SET datestyle TO iso; SET datestyle TO ymd` leaves 'ISO, YMD'; replayed on a server
    another client left at 'Postgres, MDY' it must still be 'ISO, YMD'."""
    proxy, _ = env
    dsn = proxy.dsn(user="one", password="one-secret")   # transaction pooling: replayed
    startup = {"datestyle": "Postgres, MDY"}
    a = await asyncpg.connect(dsn, server_settings=startup)
    try:
        await a.execute("SET datestyle TO iso")
        await a.execute("SET datestyle TO ymd")
        assert await a.fetchval("SHOW datestyle") == "ISO, YMD"
        b = await asyncpg.connect(dsn, server_settings=startup)
        assert await b.fetchval("SHOW datestyle") == "Postgres, MDY"
        await b.close()
        assert await a.fetchval("SHOW datestyle") == "ISO, YMD"
        assert await a.fetchval("SELECT date '1999-01-08'::text") == "1999-01-08"
    finally:
        await a.close()


async def test_set_after_a_replay_keeps_its_own_value(env):
    """A SET sent right after the replay of the client's settings on a server another
    client had: both report the setting; the SET's value (the last report) is the one
    replayed later, not the replay's (regress timestamptz/horology, 4 parallel clients)."""
    proxy, _ = env
    dsn = proxy.dsn(user="one", password="one-secret")   # a pool of one: a, b alternate
    a = await asyncpg.connect(dsn, server_settings={"timezone": "PST8PDT",
                                                    "datestyle": "Postgres, MDY"})
    b = await asyncpg.connect(dsn)
    try:
        for tz, offset, style, shown in [("'+02:00'", "-02", "ISO", "1999-01-08"),
                                         ("'-13:00'", "+13", "German", "08.01.1999")]:
            assert await b.fetchval("SELECT 1") == 1      # the server has b's settings
            await a.execute(f"SET timezone = {tz}")       # a's replayed first, then this
            assert await b.fetchval("SELECT 1") == 1
            assert await a.fetchval("SELECT to_char(now(), 'OF')") == offset
            assert await b.fetchval("SELECT 1") == 1
            await a.execute(f"SET datestyle = {style}")
            assert await b.fetchval("SELECT 1") == 1
            assert await a.fetchval("SELECT date '1999-01-08'::text") == shown
        await a.execute("RESET timezone")
        assert await b.fetchval("SELECT 1") == 1
        assert await a.fetchval("SHOW timezone") == "PST8PDT"
        assert await b.fetchval("SHOW timezone") != "PST8PDT"
    finally:
        await a.close()
        await b.close()


async def test_a_client_gets_its_own_server_back(env):
    """Transaction pooling, a pool of two: a client whose last server is idle gets that one
    again (not the one most recently released by someone else)."""
    proxy, _ = env
    dsn = proxy.dsn()                       # user app: pool_size 2, transaction pooling
    a = await asyncpg.connect(dsn)
    b = await asyncpg.connect(dsn)
    try:
        ta = a.transaction()
        await ta.start()
        pa = await a.fetchval("SELECT pg_backend_pid()")   # a holds one server
        pb = await b.fetchval("SELECT pg_backend_pid()")   # b gets the other, gives it back
        assert pa != pb
        await ta.commit()                   # a's is now the most recently released
        for _ in range(3):
            tb = b.transaction()
            await tb.start()
            assert await b.fetchval("SELECT pg_backend_pid()") == pb
            await tb.commit()
            assert await a.fetchval("SELECT pg_backend_pid()") == pa
    finally:
        await a.close()
        await b.close()


async def test_failed_set_leaves_no_error_behind(env):
    _, dsn = env
    c = await asyncpg.connect(dsn)
    try:
        with pytest.raises(asyncpg.UndefinedObjectError, match="no_such_variable"):
            await c.execute("SET no_such_variable TO 42")
        assert await c.fetchval("SELECT 1") == 1
        with pytest.raises(asyncpg.UndefinedObjectError, match="custom.my_guc"):
            await c.fetchval("SHOW custom.my_guc")
    finally:
        await c.close()


@pytest.mark.parametrize("mode", ["transaction", "session"])
async def test_load_removes_placeholder_settings(pg_cluster, mode):
    """guc.sql: a placeholder SET in a library's namespace, then LOAD of that library (which
    removes it), then a SET of it that fails: the next statement gets its own answer only
    (the proxy replayed the removed placeholder and its error showed on the next SHOW).
    A proxy of its own: its server is new, so plpgsql is not loaded there yet."""
    cfg = {"proxy": {"database": "app", "pool_size": 1, "pool_mode": mode},
           "users": USERS, "shards": _shards(pg_cluster, {"shard0"})}
    with ProxyProcess(cfg) as proxy:
        c = await asyncpg.connect(proxy.dsn())
        try:
            await c.execute("SET plpgsql.extra_foo_warnings = true")
            await c.execute("LOAD 'plpgsql'")
            with pytest.raises(asyncpg.PostgresError, match="reserved prefix"):
                await c.execute("SET plpgsql.extra_foo_warnings = true")
            with pytest.raises(asyncpg.UndefinedObjectError,
                               match="unrecognized configuration parameter"):
                await c.fetchval("SHOW plpgsql.extra_foo_warnings")
            assert await c.fetchval("SELECT 1") == 1
        finally:
            await c.close()


def test_large_objects_with_fastpath_calls(env, tmp_path):
    """psql's \\lo_import / \\lo_export / \\lo_unlink use libpq's fastpath FunctionCall."""
    _, dsn = env
    src = tmp_path / "blob.bin"
    src.write_bytes(bytes(range(256)) * 300)
    out = psql(dsn, "-c", f"\\lo_import '{src}'").stdout.split()
    oid = int(out[-1])
    dst = tmp_path / "back.bin"
    psql(dsn, "-c", f"\\lo_export {oid} '{dst}'")
    assert dst.read_bytes() == src.read_bytes()
    psql(dsn, "-c", f"\\lo_unlink {oid}")
    left = psql(dsn, "-c", f"SELECT count(*) FROM pg_largeobject_metadata WHERE oid = {oid}")
    assert left.stdout.strip() == "0"


def test_fastpath_calls_on_several_shards_need_a_shard(pg_cluster, tmp_path):
    """With two shards a large object lives on one: the call is refused (the session goes
    on) until SET pgshard.shard names it; then it runs there."""
    cfg = {"proxy": {"database": "app", "pool_size": 2}, "users": USERS,
           "shards": _shards(pg_cluster)}
    src = tmp_path / "blob.bin"
    src.write_bytes(b"x" * 5000)
    with ProxyProcess(cfg) as proxy:
        bad = psql(proxy.dsn(), "-c", f"\\lo_import '{src}'", check=False)
        assert bad.returncode != 0 and "SET pgshard.shard" in bad.stderr
        got = psql(proxy.dsn(), "-c", "SET pgshard.shard = 'shard1'", "-c",
                   f"\\lo_import '{src}'").stdout.split()
        oid = int(got[-1])
    node = next(s.primary for s in pg_cluster.shards if s.name == "shard1")
    assert node.psql(f"SELECT length(lo_get({oid}))") == "5000"
    node.psql(f"SELECT lo_unlink({oid})")


def test_commit_and_chain(env):
    _, dsn = env
    with psycopg.connect(dsn, autocommit=True) as c:
        with pytest.raises(psycopg.errors.NoActiveSqlTransaction, match="AND CHAIN"):
            c.execute("COMMIT AND CHAIN")
        c.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        c.execute("COMMIT AND CHAIN")
        assert c.execute("SHOW transaction_isolation").fetchone() == ("serializable",)
        c.execute("COMMIT")
        assert c.execute("SHOW transaction_isolation").fetchone() == ("read committed",)


@pytest.mark.parametrize("reset,same", [("discard", True), ("close", False)])
def test_session_server_reset(pg_cluster, reset, same):
    cfg = {"proxy": {"database": "app", "pool_size": 2, "session_server_reset": reset},
           "users": USERS + [SESSION], "shards": _shards(pg_cluster, {"shard0"})}
    with ProxyProcess(cfg) as proxy:
        dsn = proxy.dsn(user="sone", password="sone-secret")
        pids = []
        for _ in range(2):
            with psycopg.connect(dsn, autocommit=True) as c:
                pids.append(c.execute("SELECT pg_backend_pid()").fetchone()[0])
        assert (pids[0] == pids[1]) is same
