"""No client ever observes another client's session state, under transaction pooling too.

The user `one` has a pool of one server, so the next client *must* get the server the
previous client used: whatever that client left there (a role, a setting, a lock, a temp
table, an SQL prepared statement, a cursor) would show. State the proxy replays (tracked
SETs) follows the client; state it cannot replay pins the client to its server, which is
reset (DISCARD ALL) before another client gets it.
"""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest

from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import USERS, _shards

ONE = {"name": "one", "password": "one-secret", "pool_size": 1}
TWO = {"name": "two", "password": "two-secret", "pool_size": 2}
ROLE = "pgshard_iso_role"

# What a client can see of session state, each as one query with one value.
PROBES = {
    "user": "SELECT current_user || '/' || session_user",
    "search_path": "SHOW search_path",
    "work_mem": "SHOW work_mem",
    "isolation": "SHOW default_transaction_isolation",
    "xmloption": "SHOW xmloption",
    "locks": "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory'",
    "temp": "SELECT count(*)::text FROM pg_class WHERE relnamespace = pg_my_temp_schema()",
    "prepared": "SELECT count(*)::text FROM pg_prepared_statements WHERE from_sql",
    "cursors": "SELECT count(*)::text FROM pg_cursors WHERE is_holdable",
}

# (case, statements a client runs, probe that would show it)
LEAVES = [
    ("set role", ["SET ROLE " + ROLE], "user"),
    ("set session authorization", ["SET SESSION AUTHORIZATION " + ROLE], "user"),
    ("set role in a string of several", ["SET ROLE " + ROLE + "; SELECT 1"], "user"),
    ("set search_path", ["SET search_path TO pg_catalog"], "search_path"),
    ("set_config", ["SELECT set_config('search_path', '', false)"], "search_path"),
    ("set_config qualified", ["SELECT pg_catalog.set_config('work_mem', '1234kB', false)"],
     "work_mem"),
    ("quoted set", ['SET "work_mem" = \'2345kB\''], "work_mem"),
    ("session characteristics",
     ["SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE"], "isolation"),
    ("xml option", ["SET XML OPTION DOCUMENT"], "xmloption"),
    ("advisory lock", ["SELECT pg_advisory_lock(4242)"], "locks"),
    ("temp table", ["CREATE TEMP TABLE iso_tt (x int)", "INSERT INTO iso_tt VALUES (1)"],
     "temp"),
    ("select into temp", ["SELECT 1 AS x INTO TEMP iso_tt2"], "temp"),
    ("sql prepare", ["PREPARE iso_p AS SELECT 1", "EXECUTE iso_p"], "prepared"),
    ("with hold cursor", ["BEGIN", "DECLARE iso_c CURSOR WITH HOLD FOR SELECT 1", "COMMIT"],
     "cursors"),
    ("do block", ["DO $$ BEGIN PERFORM set_config('work_mem', '3456kB', false); END $$"],
     "work_mem"),
    # the client leaves inside a transaction: the server is rolled back, then reset
    ("left in a transaction (pg_dump's set_config)",
     ["SELECT pg_catalog.set_config('search_path', '', false)", "BEGIN", "SELECT 1"],
     "search_path"),
    ("temp table, left in a transaction", ["CREATE TEMP TABLE iso_tt3 (x int)", "BEGIN",
                                           "INSERT INTO iso_tt3 VALUES (1)"], "temp"),
    ("advisory lock, left in a transaction", ["SELECT pg_advisory_lock(4343)", "BEGIN",
                                              "SELECT 1"], "locks"),
]


@pytest.fixture(scope="module")
def env(pg_cluster):
    p = pg_cluster.shards[0].primary
    p.psql(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') "
           f"THEN CREATE ROLE {ROLE}; END IF; END $$; GRANT ALL ON SCHEMA public TO {ROLE}")
    cfg = {"proxy": {"database": "app", "pool_size": 4, "query_wait_timeout": 3},
           "users": USERS + [ONE, TWO], "shards": _shards(pg_cluster, {"shard0"})}
    with ProxyProcess(cfg) as proxy:
        yield proxy


async def _probe(dsn: str, **kw) -> dict[str, str]:
    c = await asyncpg.connect(dsn, **kw)
    try:
        return {name: await c.fetchval(sql) for name, sql in PROBES.items()}
    finally:
        await c.close()


async def _run(dsn: str, statements: list[str]) -> None:
    c = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await c.execute(sql)
        # the state is there for this client (the test would prove nothing otherwise)
        assert await c.fetchval("SELECT 1") == 1
    finally:
        await c.close()


@pytest.mark.parametrize("case,statements,probe", LEAVES, ids=[c[0] for c in LEAVES])
async def test_next_client_on_the_same_server_sees_its_own_defaults(env, case, statements,
                                                                    probe):
    dsn = env.dsn(user="one", password="one-secret")
    before = await _probe(dsn)
    c = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await c.execute(sql)
        changed = await c.fetchval(PROBES[probe])
    finally:
        await c.close()
    assert changed != before[probe], f"{case}: the statements changed nothing visible"
    after = await _probe(dsn)
    assert after == before, f"{case}: the next client saw {after} instead of {before}"


async def test_client_leaving_a_failed_transaction_leaves_nothing(env):
    """set_config, then a transaction that fails and is left open: the server is rolled
    back and reset (ROLLBACK and DISCARD ALL as two statements: DISCARD ALL refuses to
    run in a string of several), never handed on with the client's search_path."""
    dsn = env.dsn(user="one", password="one-secret")
    before = await _probe(dsn)
    c = await asyncpg.connect(dsn)
    try:
        await c.execute("SELECT pg_catalog.set_config('search_path', '', false)")
        await c.execute("BEGIN")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await c.execute("SELECT 1/0")
    finally:
        await c.close()
    assert await _probe(dsn) == before


async def test_extended_protocol_set_config_does_not_leak(env):
    dsn = env.dsn(user="one", password="one-secret")
    before = await _probe(dsn)
    c = await asyncpg.connect(dsn)
    assert await c.fetchval("SELECT set_config($1, $2, false)", "search_path", "pg_catalog") \
        == "pg_catalog"
    assert await c.fetchval("SHOW search_path") == "pg_catalog"
    await c.close()
    assert await _probe(dsn) == before


async def test_pinned_client_keeps_its_state_while_others_run(env):
    """A client with a temp table keeps it across transactions while other clients of the
    same user run on the pool's other server, and they never see it."""
    dsn = env.dsn(user="two", password="two-secret")
    a = await asyncpg.connect(dsn)
    try:
        await a.execute("CREATE TEMP TABLE iso_keep (x int)")
        for i in range(5):
            await a.execute("INSERT INTO iso_keep VALUES ($1)", i)
            b = await asyncpg.connect(dsn)
            assert await b.fetchval(PROBES["temp"]) == "0"
            assert await b.fetchval(PROBES["user"]) == (await _probe(dsn))["user"]
            await b.close()
        assert await a.fetchval("SELECT count(*) FROM iso_keep") == 5
        async with a.transaction():
            await a.execute("INSERT INTO iso_keep VALUES (99)")
        assert await a.fetchval("SELECT sum(x) FROM iso_keep") == 109
    finally:
        await a.close()


async def test_pinned_server_is_not_handed_to_another_client(env):
    """With a pool of one and its only server pinned, another client waits and then gets a
    clear error: it never runs on the pinned server."""
    dsn = env.dsn(user="one", password="one-secret")
    a = await asyncpg.connect(dsn)
    try:
        await a.execute("SELECT pg_advisory_lock(77)")
        b = await asyncpg.connect(dsn)
        try:
            with pytest.raises(asyncpg.PostgresError, match="query_wait_timeout"):
                await b.fetchval(PROBES["locks"])
        finally:
            await b.close()
        assert await a.fetchval(PROBES["locks"]) == "1"
    finally:
        await a.close()
    assert (await _probe(dsn))["locks"] == "0"


async def test_sql_prepare_execute_deallocate(env):
    dsn = env.dsn(user="app", password="app-secret")
    c = await asyncpg.connect(dsn)
    try:
        await c.execute("PREPARE iso_q (int) AS SELECT $1 * 2")
        assert await c.fetchval("EXECUTE iso_q (21)") == 42
        await c.execute("DEALLOCATE iso_q")
        await c.execute("PREPARE iso_q AS SELECT 'again'")
        assert await c.fetchval("EXECUTE iso_q") == "again"
        await c.execute("DEALLOCATE ALL")
        with pytest.raises(asyncpg.PostgresError, match="does not exist"):
            await c.fetchval("EXECUTE iso_q")
        # protocol-level statements of this client still work after DEALLOCATE ALL
        assert await c.fetchval("SELECT $1::int + 1", 1) == 2
    finally:
        await c.close()


async def test_discard_all_reaches_the_server(env):
    dsn = env.dsn(user="app", password="app-secret")
    c = await asyncpg.connect(dsn)
    try:
        await c.execute("CREATE TEMP TABLE iso_gone (x int)")
        await c.execute("PREPARE iso_d AS SELECT 1")
        await c.execute("DISCARD ALL")
        assert await c.fetchval(PROBES["temp"]) == "0"
        assert await c.fetchval(PROBES["prepared"]) == "0"
    finally:
        await c.close()


def test_discard_all_in_session_pooling(env):
    with psycopg.connect(env.dsn(user="sess", password="sess-secret"), autocommit=True) as c:
        c.execute("CREATE TEMP TABLE iso_sess (x int)")
        c.execute("SET work_mem = '4567kB'")
        c.execute("DISCARD ALL")
        assert c.execute(PROBES["temp"]).fetchone()[0] == "0"
        assert c.execute("SHOW work_mem").fetchone()[0] != "4567kB"


@pytest.mark.parametrize("reset", ["RESET timezone", "RESET ALL", "SET timezone TO DEFAULT"])
async def test_reset_goes_back_to_the_startup_value(env, reset):
    dsn = env.dsn(user="one", password="one-secret")
    c = await asyncpg.connect(dsn, server_settings={"timezone": "America/New_York"})
    try:
        assert await c.fetchval("SHOW timezone") == "America/New_York"
        await c.execute("SET timezone = 'Asia/Tokyo'")
        assert await c.fetchval("SHOW timezone") == "Asia/Tokyo"
        await c.execute(reset)
        assert await c.fetchval("SHOW timezone") == "America/New_York"
    finally:
        await c.close()


async def test_failed_set_is_not_replayed(env):
    """A SET the server refused is not remembered: the client's next statements (on any
    server) do not fail because of it."""
    dsn = env.dsn(user="two", password="two-secret")
    c = await asyncpg.connect(dsn)
    try:
        with pytest.raises(asyncpg.PostgresError):
            await c.execute("SET work_mem = 'not a size'")
        for _ in range(4):
            assert await c.fetchval("SELECT 1") == 1
        async with c.transaction():
            await c.execute("SET LOCAL work_mem = '5678kB'")
        with pytest.raises(asyncpg.PostgresError):
            async with c.transaction():
                await c.execute("SET work_mem = '6789kB'")
                await c.execute("SELECT 1/0")
        assert await c.fetchval("SHOW work_mem") != "6789kB"
    finally:
        await c.close()


async def test_sticky_statement_on_several_shards_is_refused(pg_cluster):
    cfg = {"proxy": {"database": "app", "pool_size": 2}, "users": USERS,
           "shards": _shards(pg_cluster)}
    with ProxyProcess(cfg) as proxy:
        c = await asyncpg.connect(proxy.dsn())
        try:
            with pytest.raises(asyncpg.FeatureNotSupportedError, match="temporary table"):
                await c.execute("CREATE TEMP TABLE iso_everywhere (x int)")
            await c.execute("/* shard: shard1 */ CREATE TEMP TABLE iso_one (x int)")
            await c.execute("/* shard: shard1 */ INSERT INTO iso_one VALUES (1)")
            assert await c.fetchval("/* shard: shard1 */ SELECT count(*) FROM iso_one") == 1
        finally:
            await c.close()
        await asyncio.sleep(0)
