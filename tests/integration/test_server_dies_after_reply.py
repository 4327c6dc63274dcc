"""A server that dies right after answering: its FATAL arrives in the same read as the
unit's last ReadyForQuery (a primary SIGKILLed under write load does this: each backend
sends its reply, sees the postmaster gone and says FATAL). Under transaction pooling the
client has let go of that server at the ReadyForQuery, so the FATAL is not the client's:
it never sees it and its next statement runs on another server (asyncpg, handed a FATAL it
did not ask for, breaks its connection: "cannot switch to state 12"). A client that keeps
its server (session pooling) gets the FATAL and its connection ends, as PostgreSQL's would.

The proxy is stopped (SIGSTOP) while its server answers and is terminated, so both reach
the proxy's socket before it reads either."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import asyncpg
import pytest

from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import USERS, _shards

pytestmark = pytest.mark.integration

ONE = {"name": "one", "password": "one-secret", "pool_size": 1}


@pytest.fixture(scope="module", params=["transaction", "session"])
def proxy(request, pg_cluster):
    cfg = {"proxy": {"database": "app", "pool_mode": request.param, "query_wait_timeout": 5},
           "users": USERS + [ONE], "shards": _shards(pg_cluster, {"shard0"})}
    with ProxyProcess(cfg) as p:
        yield request.param, p


def _wait(primary, sql: str, want: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while primary.psql(sql) != want:
        assert time.monotonic() < deadline, f"{sql} never gave {want!r}"
        time.sleep(0.02)


async def test_fatal_after_the_reply_reaches_only_a_client_that_keeps_the_server(
        proxy, pg_cluster):
    mode, p = proxy
    primary = pg_cluster.shards[0].primary
    conn = await asyncpg.connect(f"postgresql://one:one-secret@127.0.0.1:{p.port}/app")
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        query = asyncio.create_task(conn.fetchval("SELECT 7 FROM pg_sleep(0.3)"))
        await asyncio.to_thread(_wait, primary, "SELECT count(*) FROM pg_stat_activity WHERE "
                                f"pid = {backend} AND query LIKE '%pg_sleep%' AND state = "
                                "'active'", "1")
        os.kill(p.proc.pid, signal.SIGSTOP)
        try:
            # While the proxy sleeps: the query ends (its reply waits in the proxy's socket),
            # then its backend is terminated and says FATAL, after the reply.
            _wait(primary, f"SELECT state FROM pg_stat_activity WHERE pid = {backend}", "idle")
            primary.psql(f"SELECT pg_terminate_backend({backend})")
            _wait(primary, f"SELECT count(*) FROM pg_stat_activity WHERE pid = {backend}", "0")
        finally:
            os.kill(p.proc.pid, signal.SIGCONT)
        assert await asyncio.wait_for(query, 10) == 7
        if mode == "transaction":
            # The FATAL was the dead server's, not the client's: it carries on, on another.
            assert await asyncio.wait_for(conn.fetchval("SELECT 1"), 10) == 1
            assert await conn.fetchval("SELECT pg_backend_pid()") != backend
            assert await conn.fetchval("SELECT count(*) FROM generate_series(1, 3)") == 3
        else:
            # Session pooling: the server was the client's; its connection ends with it.
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError,
                                asyncpg.exceptions._base.InternalClientError, OSError)):
                for _ in range(50):
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), 10)
                    await asyncio.sleep(0.05)
    finally:
        conn.terminate()
    # The pool of one is whole again: a new client is served.
    other = await asyncpg.connect(f"postgresql://one:one-secret@127.0.0.1:{p.port}/app")
    try:
        assert await asyncio.wait_for(other.fetchval("SELECT 2"), 10) == 2
    finally:
        await other.close()
