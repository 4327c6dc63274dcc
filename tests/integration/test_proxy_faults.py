"""Bad input and failures: wrong passwords, garbage on the wire, dead servers, limits."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import time

import asyncpg
import psycopg
import pytest

from tests.fixtures.proxy import ProxyProcess, env_without_pg
from tests.integration.conftest import USERS, _shards


def _read_error(sock: socket.socket) -> dict[str, str]:
    """Read messages until an ErrorResponse; return its fields."""
    buf = b""
    sock.settimeout(5)
    while True:
        while len(buf) < 5:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError("connection closed without an ErrorResponse")
            buf += chunk
        t, n = buf[0:1], struct.unpack("!i", buf[1:5])[0]
        while len(buf) < n + 1:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError("connection closed mid-message")
            buf += chunk
        body, buf = buf[5:n + 1], buf[n + 1:]
        if t == b"E":
            fields = {}
            for part in body.split(b"\0"):
                if part:
                    fields[chr(part[0])] = part[1:].decode()
            return fields


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, TimeoutError):
        return isinstance(sock, socket.socket)


def _startup(user="trustu", database="app") -> bytes:
    body = struct.pack("!i", 196608) + b"user\0" + user.encode() + b"\0database\0" + \
        database.encode() + b"\0\0"
    return struct.pack("!i", len(body) + 4) + body


def _ready(sock) -> None:
    sock.settimeout(5)
    data = b""
    while not data.endswith(b"Z\x00\x00\x00\x05I"):
        chunk = sock.recv(65536)
        assert chunk, "closed during startup"
        data += chunk


@pytest.mark.parametrize("payload, what", [
    (struct.pack("!i", 3) + b"xxxx", "invalid startup packet length"),
    (struct.pack("!ii", 8, 12345678), "unsupported frontend protocol"),
    (struct.pack("!i", 1_000_000), "invalid startup packet length"),
])
def test_garbage_startup_gets_08P01_and_proxy_survives(proxy2, payload, what):
    with socket.create_connection(("127.0.0.1", proxy2.port)) as s:
        s.sendall(payload)
        err = _read_error(s)
        assert err["C"] in ("08P01", "0A000") and what in err["M"], err
        assert _closed(s)
    assert proxy2.alive()
    assert _query_ok(proxy2)


@pytest.mark.parametrize("message, what", [
    (b"Z" + struct.pack("!i", 4), "invalid message type"),
    (b"Q" + struct.pack("!i", 2), "invalid message length"),
    (b"Q" + struct.pack("!i", -7), "invalid message length"),
    (b"Q" + struct.pack("!i", 2 * 1024 * 1024) + b"x" * 100, "exceeds max_message_size"),
    (b"P" + struct.pack("!i", 6) + b"\xff\xfe", "invalid"),
    (b"B" + struct.pack("!i", 8) + b"\0\0\xff\xff", "Bind"),
])
def test_malformed_message_after_startup(proxy2, message, what):
    with socket.create_connection(("127.0.0.1", proxy2.port)) as s:
        s.sendall(_startup())
        _ready(s)
        s.sendall(message + b"S\x00\x00\x00\x04")
        err = _read_error(s)
        assert err["C"] in ("08P01", "26000"), err
        if err["C"] == "08P01":
            assert what.lower() in err["M"].lower(), err
            assert _closed(s)
    assert proxy2.alive()
    assert _query_ok(proxy2)


def _query_ok(proxy) -> bool:
    r = subprocess.run(["psql", "-X", "-At", proxy.dsn(), "-c", "SELECT 1 /* shard: shard0 */"],
                       capture_output=True, text=True, env=env_without_pg(), timeout=30)
    return r.stdout.strip() == "1"


async def test_wrong_password_and_unknown_user(proxy2):
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(proxy2.dsn(password="wrong"))
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(proxy2.dsn(user="nobody", password="x"))
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(proxy2.dsn(user="md5u", password="wrong"))
    c = await asyncpg.connect(proxy2.dsn(user="md5u", password="md5-secret"))
    assert await c.fetchval("SELECT 1 /* shard: shard1 */") == 1
    await c.close()
    c = await asyncpg.connect(proxy2.dsn(user="trustu", password=""))
    assert await c.fetchval("SELECT current_user /* shard: shard1 */") == "pgshard"
    await c.close()


async def test_unknown_database(proxy2):
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await asyncpg.connect(proxy2.dsn(database="nope"))


def test_tls_handshake(proxy2):
    with psycopg.connect(proxy2.dsn(sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1 /* shard: shard0 */").fetchone() == (1,)
    with psycopg.connect(proxy2.dsn(sslmode="disable")) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 2 /* shard: shard0 */").fetchone() == (2,)


def test_no_tls_configured_means_N(proxy1):
    with pytest.raises(psycopg.OperationalError, match="(?i)ssl|server does not support"):
        psycopg.connect(proxy1.dsn(sslmode="require"))


def test_killed_server_connection(proxy2, pg_cluster):
    """pg_terminate_backend on the server running a client's query: the client gets the
    server's error, the server is evicted, and the client and others go on."""
    primary = pg_cluster.shards[0].primary
    with psycopg.connect(proxy2.dsn(), autocommit=True) as conn:
        conn.execute("SET application_name = 'victim'")
        pid = conn.execute("SELECT pg_backend_pid() /* shard: shard0 */").fetchone()[0]
        killer = subprocess.Popen(["sh", "-c", f"sleep 1; psql -X -At '{primary.dsn}' -c "
                                   f"'SELECT pg_terminate_backend({pid})'"],
                                  env=env_without_pg(), stdout=subprocess.DEVNULL)
        with pytest.raises(psycopg.OperationalError) as ei:
            conn.execute("SELECT pg_sleep(10) /* shard: shard0 */")
        killer.wait(10)
        assert ei.value.sqlstate in ("57P01", "08006", None), ei.value.sqlstate
    with psycopg.connect(proxy2.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 3 /* shard: shard0 */").fetchone() == (3,)
    assert proxy2.alive()


def test_client_gone_mid_transaction_leaves_no_dirty_server(proxy2, pg_cluster):
    primary = pg_cluster.shards[1].primary
    primary.psql("CREATE TABLE IF NOT EXISTS dirty (id int)")
    s = socket.create_connection(("127.0.0.1", proxy2.port))
    s.sendall(_startup())
    _ready(s)
    q = b"BEGIN; INSERT INTO dirty VALUES (1); /* shard: shard1 */\0"
    s.sendall(b"Q" + struct.pack("!i", len(q) + 4) + q)
    time.sleep(0.5)
    s.close()  # vanish inside the transaction
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        n = primary.psql("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'")
        if n.strip() == "0":
            break
        time.sleep(0.2)
    assert n.strip() == "0"
    assert primary.psql("SELECT count(*) FROM dirty").strip() == "0"


async def test_query_wait_timeout_and_max_client_conn(pg_cluster):
    cfg = {"proxy": {"database": "app", "pool_size": 1, "query_wait_timeout": 1,
                     "max_client_conn": 3},
           "users": USERS, "shards": _shards(pg_cluster)}
    with ProxyProcess(cfg) as p:
        dsn = p.dsn("md5u", "md5-secret")   # a user without its own pool_size
        holder = await asyncpg.connect(dsn)
        tr = holder.transaction()
        await tr.start()
        await holder.execute("SELECT 1 /* shard: shard0 */")   # holds the only server
        waiter = await asyncpg.connect(dsn)
        t0 = time.monotonic()
        with pytest.raises(asyncpg.PostgresError) as ei:
            await waiter.fetchval("SELECT 2 /* shard: shard0 */")
        assert ei.value.sqlstate == "53000" and "query_wait_timeout" in str(ei.value)
        assert time.monotonic() - t0 < 10
        third = await asyncpg.connect(dsn)
        with pytest.raises(asyncpg.TooManyConnectionsError):
            await asyncpg.connect(dsn)
        await tr.rollback()
        # Once the server is free, the waiting client is served.
        assert await waiter.fetchval("SELECT 2 /* shard: shard0 */") == 2
        for c in (holder, waiter, third):
            await c.close()
        await asyncio.sleep(0.1)


async def test_session_pooling_keeps_session_state(proxy2):
    c = await asyncpg.connect(proxy2.dsn(user="sess", password="sess-secret"))
    try:
        await c.execute("CREATE TEMP TABLE scratch (x int) /* shard: shard0 */")
        await c.execute("INSERT INTO scratch VALUES (1) /* shard: shard0 */")
        assert await c.fetchval("SELECT count(*) FROM scratch /* shard: shard0 */") == 1
    finally:
        await c.close()


async def test_session_settings_follow_the_client(proxy1):
    """SETs are replayed on whichever pooled server serves the client next."""
    conns = [await asyncpg.connect(proxy1.dsn()) for _ in range(6)]
    try:
        for i, c in enumerate(conns):
            await c.execute(f"SET statement_timeout = '{1001 + i}ms'")
        for _ in range(3):
            for i, c in enumerate(conns):
                assert await c.fetchval("SHOW statement_timeout") == f"{1001 + i}ms"
        await conns[0].execute("RESET statement_timeout")
        assert await conns[0].fetchval("SHOW statement_timeout") == "0"
    finally:
        for c in conns:
            await c.close()


async def test_listen_needs_session_pooling(proxy2):
    c = await asyncpg.connect(proxy2.dsn())
    try:
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="session"):
            await c.execute("LISTEN jobs")
        assert await c.fetchval("SELECT 1 /* shard: shard0 */") == 1
    finally:
        await c.close()
    got = asyncio.get_running_loop().create_future()
    listener = await asyncpg.connect(proxy2.dsn(user="sess", password="sess-secret"))
    try:
        await listener.execute("SET pgshard.shard = 'shard0'")
        await listener.add_listener("jobs", lambda *a: got.done() or got.set_result(a[3]))
        sender = await asyncpg.connect(proxy2.dsn())
        await sender.execute("NOTIFY jobs, 'hello' /* shard: shard0 */")
        await sender.close()
        assert await asyncio.wait_for(got, 5) == "hello"
    finally:
        await listener.close()


async def test_listen_in_transaction_pooling_with_a_pinned_shard(proxy2):
    """LISTEN keeps the client on its server (its session state): notifications arrive
    while it is idle, also across its later transactions."""
    got: asyncio.Queue = asyncio.Queue()
    listener = await asyncpg.connect(proxy2.dsn())
    try:
        await listener.execute("SET pgshard.shard = 'shard1'")
        await listener.add_listener("tjobs", lambda *a: got.put_nowait(a[3]))
        sender = await asyncpg.connect(proxy2.dsn())
        for word in ("one", "two"):
            await sender.execute(f"NOTIFY tjobs, '{word}' /* shard: shard1 */")
            assert await asyncio.wait_for(got.get(), 5) == word
            async with listener.transaction():   # a transaction of its own in between
                assert await listener.fetchval("SELECT 1") == 1
        await sender.close()
    finally:
        await listener.close()
