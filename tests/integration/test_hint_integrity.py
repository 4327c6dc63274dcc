"""Hints and pgshard.* settings mean only what the client wrote: no hint read from a string
literal, no pgshard.* setting smuggled inside a multi-statement string, SET values checked
like PostgreSQL's, and no statement text that stalls other clients (real proxy, real
shards, asyncpg / psycopg / psql)."""

from __future__ import annotations

import asyncio
import subprocess
import time

import asyncpg
import psycopg
import pytest

from pgshard.ring import Ring, hashing
from tests.fixtures.proxy import ProxyProcess, env_without_pg
from tests.integration.conftest import USERS, _shards

TABLE = "hi_accounts"


@pytest.fixture(scope="module")
def proxy_accounts(pg_cluster):
    for s in pg_cluster.shards:
        s.primary.psql(f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} "
                       "(id bigint PRIMARY KEY, owner text, balance int)")
    cfg = {"proxy": {"database": "app", "pool_size": 4}, "users": USERS,
           "shards": _shards(pg_cluster), "tables": [{"name": TABLE, "shard_key": "id"}]}
    with ProxyProcess(cfg) as p:
        yield p


@pytest.fixture(scope="module")
def ring(pg_cluster):
    return Ring.build([s.name for s in pg_cluster.shards])


def owner(ring, key) -> str:
    return ring.owner(hashing.token(hashing.canonical_key(key)))


def _key_not_on(ring, shard: str, start: int) -> int:
    k = start
    while owner(ring, k) == shard:
        k += 1
    return k


def _where(pg_cluster, key: int) -> list[str]:
    """The shards whose primary holds the row (read directly, not through the proxy)."""
    return [s.name for s in pg_cluster.shards
            if s.primary.psql(f"SELECT count(*) FROM {TABLE} WHERE id = {key}") == "1"]


def _table_everywhere(pg_cluster) -> bool:
    return all(s.primary.psql(f"SELECT to_regclass('public.{TABLE}') IS NOT NULL") == "t"
               for s in pg_cluster.shards)


def psql(dsn: str, sql: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["psql", "-X", "-A", "-t", "-v", "VERBOSITY=verbose", dsn, "-c", sql],
                          capture_output=True, text=True, env=env_without_pg(), timeout=timeout)


# ------------------------------------------------------------ 3: hints in literals

@pytest.mark.parametrize("n, literal", list(enumerate([
    "'/* shard_key: 2 */'", "E'\\' /* shard_key: 2 */'", "$$ /* shard_key: 2 */ $$",
    "$t$/* shard: {other} */$t$"])))
async def test_a_hint_inside_a_literal_does_not_route(proxy_accounts, pg_cluster, ring, n,
                                                      literal):
    hinted = owner(ring, 2)
    other = next(s.name for s in pg_cluster.shards if s.name != owner(ring, 7000001))
    literal = literal.format(other=other)
    key = _key_not_on(ring, hinted if "shard_key" in literal else other,
                      7000001 + 1000 * n)
    conn = await asyncio.wait_for(asyncpg.connect(proxy_accounts.dsn()), 10)
    try:
        # simple protocol (no arguments) ...
        await asyncio.wait_for(conn.execute(
            f"INSERT INTO {TABLE} VALUES ({key}, {literal}, 0)"), 10)
        # ... and extended (the key as a parameter)
        await asyncio.wait_for(conn.execute(
            f"INSERT INTO {TABLE} VALUES ($1, {literal}, 0)", key + 100000), 10)
        assert _where(pg_cluster, key) == [owner(ring, key)]
        assert _where(pg_cluster, key + 100000) == [owner(ring, key + 100000)]
        got = await conn.fetchval(f"SELECT owner FROM {TABLE} WHERE id = $1", key)
        assert got is not None and "/*" in got
    finally:
        await conn.close()


async def test_a_real_hint_next_to_a_literal_still_routes(proxy_accounts, pg_cluster, ring):
    ports = {s.name: s.primary.port for s in pg_cluster.shards}
    a, b = sorted(ports)
    key_b = _key_not_on(ring, a, 7100001)
    key_a = _key_not_on(ring, b, 7100001)
    conn = await asyncio.wait_for(asyncpg.connect(proxy_accounts.dsn()), 10)
    try:
        got = await conn.fetchval(f"SELECT inet_server_port() /* shard: {b} */, '/* shard: {a} */'")
        assert got == ports[b]
        got = await conn.fetchval(f"SELECT inet_server_port(), '/* shard_key: {key_a} */' "
                                  f"/* shard_key: {key_b} */")
        assert got == ports[b]
    finally:
        await conn.close()


# ------------------------------------------------------------ 4: SET pgshard.* in a string

def test_psql_set_pgshard_before_drop_is_refused_and_nothing_runs(proxy_accounts, pg_cluster):
    dsn = proxy_accounts.dsn()
    shard1 = pg_cluster.shards[-1].name
    out = psql(dsn, f"SET pgshard.shard = '{shard1}'; DROP TABLE {TABLE}")
    assert out.returncode != 0
    assert "0A000" in out.stderr and "must be sent as their own statement" in out.stderr
    assert _table_everywhere(pg_cluster)
    out = psql(dsn, f"DROP TABLE {TABLE}; RESET pgshard.shard")
    assert out.returncode != 0 and "0A000" in out.stderr
    assert _table_everywhere(pg_cluster)
    # Text that only mentions the setting inside a literal runs as usual.
    out = psql(dsn, "SELECT 'SET pgshard.shard = x'; SELECT 41 + 1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "42"   # psql 15 prints every statement's result


def test_psycopg_multi_statement_with_pgshard_setting_is_an_error_and_the_session_goes_on(
        proxy_accounts, pg_cluster, ring):
    key = 7200001
    with psycopg.connect(proxy_accounts.dsn(), autocommit=True, connect_timeout=10) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            conn.execute(f"BEGIN; SET LOCAL pgshard.shard_key = '{key}'; "
                         f"INSERT INTO {TABLE} VALUES ({key}, 'x', 0); COMMIT")
        assert "own statement" in str(e.value)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert _where(pg_cluster, key) == []
        # Nothing of the refused string took effect; the same steps one by one work.
        assert conn.execute("SHOW pgshard.shard_key").fetchone()[0] is None
        with conn.transaction():
            conn.execute(f"SET LOCAL pgshard.shard_key = '{key}'")
            conn.execute(f"INSERT INTO {TABLE} VALUES ({key}, 'x', 0)")
        assert _where(pg_cluster, key) == [owner(ring, key)]
    assert _table_everywhere(pg_cluster)


async def test_asyncpg_multi_statement_drop_after_set_is_refused(proxy_accounts, pg_cluster):
    conn = await asyncio.wait_for(asyncpg.connect(proxy_accounts.dsn()), 10)
    try:
        with pytest.raises(asyncpg.FeatureNotSupportedError):
            await asyncio.wait_for(conn.execute(
                f"SET pgshard.shard = '{pg_cluster.shards[0].name}'; DROP TABLE {TABLE}"), 10)
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    assert _table_everywhere(pg_cluster)


# ------------------------------------------------------------ 4: SET values

async def _show(conn, name: str):
    """SHOW pgshard.* in the simple protocol (psycopg sends a text without parameters so)."""
    cur = await asyncio.wait_for(conn.execute(f"SHOW pgshard.{name}"), 10)
    return (await cur.fetchone())[0]


async def _aconnect(proxy):
    return await asyncio.wait_for(psycopg.AsyncConnection.connect(
        proxy.dsn(), autocommit=True, connect_timeout=10), 15)


async def test_set_pgshard_values_are_checked_like_postgresql(proxy_accounts, pg_cluster):
    conn = await _aconnect(proxy_accounts)
    try:
        await conn.execute("SET pgshard.shard_key = '1'")
        with pytest.raises(psycopg.errors.SyntaxError):
            await conn.execute("SET pgshard.shard_key = 'x' || 'y'")
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            await conn.execute("SET pgshard.shard_key = 42, 43")
        assert "only one argument" in str(e.value)
        with pytest.raises(psycopg.errors.SyntaxError):
            await conn.execute("SET pgshard.shard_key '42'")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            await conn.execute("SET pgshard.consistency = 'maybe'")
        with pytest.raises(psycopg.Error):
            await conn.execute("SET pgshard.shard = 'no_such_shard'")
        assert await _show(conn, "shard_key") == "1"    # unchanged by the refused ones
        await conn.execute("SET pgshard.shard_key = 007")   # an integer, as PostgreSQL reads it
        assert await _show(conn, "shard_key") == "7"
        await conn.execute("SET pgshard.shard_key TO DEFAULT")
        assert await _show(conn, "shard_key") is None
        shard = pg_cluster.shards[-1].name
        await conn.execute(f"SET pgshard.shard = {shard}")
        assert await _show(conn, "shard") == shard
    finally:
        await conn.close()


# ------------------------------------------------------------ 5: no stalls

async def test_long_set_statements_do_not_stall_other_clients(proxy_accounts):
    victim = await asyncio.wait_for(asyncpg.connect(proxy_accounts.dsn()), 10)
    attacker = await _aconnect(proxy_accounts)
    try:
        worst = 0.0
        texts = ["SET pgshard.shard_key = 'a" + " " * n + "b'" for n in (2000, 4000, 16000)]
        texts += ["RESET pgshard.shard_key" + " " * 16000 + "x",
                  "SHOW pgshard.shard" + " " * 16000 + "x",
                  "SET pgshard.shard_key = " + "1," * 8000 + "1",
                  "SET pgshard.shard_key = 'a" + " " * 16000 + "b'"]

        async def attack(text: str) -> float:
            t0 = time.monotonic()
            try:
                await attacker.execute(text)
            except psycopg.Error:
                pass   # the junk cases are errors; what matters is how long they took
            return time.monotonic() - t0

        async def ping() -> float:
            await asyncio.sleep(0.005)   # let the attack reach the proxy first
            t0 = time.monotonic()
            assert await victim.fetchval("SELECT 1") == 1
            return time.monotonic() - t0

        for text in texts:
            took = await asyncio.wait_for(asyncio.gather(attack(text), ping()), 10)
            worst = max(worst, *took)
        assert worst < 1.0, worst   # the cubic regex took 9.5 s for the 2 KB one
        assert await _show(attacker, "shard_key") == "a" + " " * 16000 + "b"
    finally:
        await victim.close()
        await attacker.close()
