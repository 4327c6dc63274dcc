"""Transactions mean what they say: a held-back BEGIN reaches the server whichever message
attached it, a client that leaves mid-request never hands its work to the next client, and
statements that touch no shard data do not need the first shard."""

from __future__ import annotations

import asyncio
import socket
import struct

import asyncpg
import psycopg
import pytest

from pgshard.ring import Ring, hashing
from tests.fixtures.clusters import temp_cluster
from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import USERS, _shards

ONE = {"name": "one", "password": "one-secret", "pool_size": 1}
DDL = "DROP TABLE IF EXISTS accounts; " \
      "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text, balance int)"


def _keys(names: list[str], start: int = 1000) -> dict[str, list[int]]:
    """Some keys of every shard, by the ring the proxy builds for these shard names."""
    ring = Ring.build(names)
    out: dict[str, list[int]] = {n: [] for n in names}
    k = start
    while min(len(v) for v in out.values()) < 8:
        out[ring.owner(hashing.token(hashing.canonical_key(k)))].append(k)
        k += 1
    return out


def _config(cluster) -> dict:
    return {"proxy": {"database": "app", "pool_size": 2, "query_wait_timeout": 10},
            "users": USERS + [ONE], "shards": _shards(cluster),
            "tables": [{"name": "accounts", "shard_key": "id"}]}


@pytest.fixture(scope="module")
def env(pg_cluster):
    for s in pg_cluster.shards:
        s.primary.psql(DDL)
    with ProxyProcess(_config(pg_cluster)) as p:
        yield p, pg_cluster, _keys([s.name for s in pg_cluster.shards])


def _on_primaries(cluster, key: int) -> dict[str, int]:
    return {s.name: int(s.primary.psql(f"SELECT count(*) FROM accounts WHERE id = {key}"))
            for s in cluster.shards}


# ------------------------------------------------------------ a raw wire client

def _msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!i", len(body) + 4) + body


def _parse(sql: str, name: str = "") -> bytes:
    return _msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))


def _bind(params: list[bytes], stmt: str = "") -> bytes:
    body = b"\0" + stmt.encode() + b"\0" + struct.pack("!h", 0) + struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", len(p)) + p
    return _msg(b"B", body + struct.pack("!h", 0))




def _describe(name: str = "") -> bytes:
    return _msg(b"D", b"S" + name.encode() + b"\0")


EXECUTE = _msg(b"E", b"\0" + struct.pack("!i", 0))
SYNC = _msg(b"S", b"")
FLUSH = _msg(b"H", b"")


def _query(sql: str) -> bytes:
    return _msg(b"Q", sql.encode() + b"\0")


class Wire:
    """A client speaking the protocol by hand, every read bounded by a deadline."""

    def __init__(self, port: int, user: str, password: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        body = struct.pack("!i", 196608) + b"user\0" + user.encode() + b"\0database\0app\0\0"
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        t, b = self.read()
        if t == b"R" and struct.unpack("!i", b[:4])[0] == 10:   # SASL: use psycopg's way
            raise AssertionError("use a trust user for the wire client")
        while t != b"Z":
            t, b = self.read()

    def send(self, *parts: bytes) -> None:
        self.sock.sendall(b"".join(parts))

    def read(self) -> tuple[bytes, bytes]:
        while True:
            if len(self.buf) >= 5:
                n = struct.unpack("!i", self.buf[1:5])[0]
                if len(self.buf) >= n + 1:
                    t, body, self.buf = self.buf[:1], self.buf[5:n + 1], self.buf[n + 1:]
                    return t, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk

    def until(self, last: bytes) -> list[tuple[bytes, bytes]]:
        out = []
        while True:
            t, b = self.read()
            out.append((t, b))
            if t == last:
                return out

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------ 1. a ROLLBACK rolls back

@pytest.mark.parametrize("shard", ["shard0", "shard1"])
async def test_asyncpg_rollback_leaves_nothing(env, shard):
    proxy, cluster, keys = env
    conn = await asyncpg.connect(proxy.dsn())
    try:
        for k in keys[shard][:3]:
            tr = conn.transaction()
            await tr.start()
            await conn.execute("INSERT INTO accounts VALUES ($1, 'rb', 0)", k)
            assert await conn.fetchval("SELECT count(*) FROM accounts WHERE id = $1", k) == 1
            await tr.rollback()
            assert await conn.fetchval("SELECT count(*) FROM accounts WHERE id = $1", k) == 0
            assert _on_primaries(cluster, k) == {s.name: 0 for s in cluster.shards}
        k = keys[shard][3]
        async with conn.transaction():
            await conn.execute("INSERT INTO accounts VALUES ($1, 'kept', 0)", k)
        assert _on_primaries(cluster, k)[shard] == 1
    finally:
        await conn.close()


@pytest.mark.parametrize("shard", ["shard0", "shard1"])
def test_wire_begin_then_flushed_describe_then_execute_is_in_the_transaction(env, shard):
    proxy, cluster, keys = env
    k = keys[shard][4]
    w = Wire(proxy.port, "trustu", "")
    try:
        w.send(_query("BEGIN"))
        assert w.until(b"Z")[-1] == (b"Z", b"T")
        # A look-only unit (what asyncpg sends to prepare) attaches any server ...
        w.send(_parse("INSERT INTO accounts VALUES ($1, 'w', 0)", "s1"), _describe("s1"), FLUSH)
        got = [t for t, _ in (w.read(), w.read(), w.read())]
        assert got == [b"1", b"t", b"n"]
        # ... and the client, still in its transaction, is told so at a Sync.
        w.send(SYNC)
        assert w.until(b"Z")[-1] == (b"Z", b"T")
        w.send(_bind([str(k).encode()], "s1"), EXECUTE, SYNC)
        replies = w.until(b"Z")
        assert (b"C", b"INSERT 0 1\0") in replies and replies[-1] == (b"Z", b"T")
        w.send(_query("ROLLBACK"))
        assert w.until(b"Z")[-1] == (b"Z", b"I")
    finally:
        w.close()
    assert sum(_on_primaries(cluster, k).values()) == 0


def test_psycopg_prepared_rollback(env):
    proxy, cluster, keys = env
    with psycopg.connect(proxy.dsn(), prepare_threshold=0, connect_timeout=10) as conn:
        for shard in ("shard0", "shard1"):
            k = keys[shard][5]
            conn.execute("INSERT INTO accounts VALUES (%s, 'p', 0)", (k,))
            conn.rollback()
            assert sum(_on_primaries(cluster, k).values()) == 0


# ------------------------------------------------------------ 2. no half-finished request inherited

def _next_client_works(proxy, k: int) -> int:
    """The only server of user `one` on k's shard answers the next client at once."""
    async def go():
        conn = await asyncpg.connect(proxy.dsn("one", "one-secret"), timeout=10)
        try:
            return await asyncio.wait_for(
                conn.fetchval("SELECT count(*) FROM accounts WHERE id = $1", k), 10)
        finally:
            await conn.close()
    return asyncio.run(go())


def _leave_mid_unit(proxy, parts: list[bytes], reads: int) -> None:
    """As user `one`: send parts, read `reads` messages, then vanish without a Sync."""
    conn = psycopg.connect(proxy.dsn("one", "one-secret"), connect_timeout=10)
    sock = socket.socket(fileno=conn.pgconn.socket)   # the authenticated socket, by hand
    sock.settimeout(10)
    try:
        sock.sendall(b"".join(parts))
        buf = b""
        seen = 0
        while seen < reads:
            while len(buf) < 5 or len(buf) < struct.unpack("!i", buf[1:5])[0] + 1:
                chunk = sock.recv(65536)
                assert chunk, "closed early"
                buf += chunk
            n = struct.unpack("!i", buf[1:5])[0]
            buf = buf[n + 1:]
            seen += 1
    finally:
        sock.shutdown(socket.SHUT_RDWR)   # gone, without a Terminate
        sock.detach()
        conn.pgconn.finish()


@pytest.mark.parametrize("shard", ["shard0", "shard1"])
def test_client_gone_after_flush_does_not_commit_its_insert(env, shard):
    proxy, cluster, keys = env
    k = keys[shard][6]
    # Parse, Bind, Execute, Flush: the INSERT ran in an implicit transaction, no Sync yet.
    _leave_mid_unit(proxy, [_parse("INSERT INTO accounts VALUES ($1, 'half', 0)"),
                            _bind([str(k).encode()]), EXECUTE, FLUSH], reads=3)
    assert _next_client_works(proxy, k) == 0
    assert sum(_on_primaries(cluster, k).values()) == 0


def test_client_gone_after_bind_of_missing_statement(env):
    proxy, cluster, keys = env
    k = keys["shard0"][7]
    # A flushed Describe attaches a server, then a Bind names a statement that is not there.
    _leave_mid_unit(proxy, [_parse(f"SELECT * FROM accounts WHERE id = {k}", "s1"),
                            _describe("s1"), FLUSH, _bind([], "nosuch"), FLUSH], reads=4)
    for shard in ("shard0", "shard1"):
        assert _next_client_works(proxy, keys[shard][0]) == 0


def test_client_gone_after_look_only_unit_keeps_the_server(env):
    proxy, cluster, keys = env
    _leave_mid_unit(proxy, [_parse("SELECT 1", "s1"), _describe("s1"), FLUSH], reads=3)
    for shard in ("shard0", "shard1"):
        assert _next_client_works(proxy, keys[shard][1]) == 0


# ------------------------------------------------------------ 8. no first-shard dependency

def test_statements_without_shard_data_survive_shard0_down():
    with temp_cluster(shards=2, replicas=0) as cluster:
        for s in cluster.shards:
            s.primary.psql(DDL)
        keys = _keys([s.name for s in cluster.shards])
        cfg = _config(cluster)
        cfg["proxy"]["connect_timeout"] = 2
        with ProxyProcess(cfg) as proxy:
            cluster.shards[0].primary.stop(mode="immediate")

            async def go():
                results = []
                for i in range(12):
                    conn = await asyncpg.connect(proxy.dsn(), timeout=10)
                    try:
                        results.append(await asyncio.wait_for(conn.fetchval("SELECT 1"), 10))
                        k = keys["shard1"][i % 8]
                        stmt = await asyncio.wait_for(conn.prepare(
                            "INSERT INTO accounts VALUES ($1, 'up', 0) ON CONFLICT DO NOTHING"), 10)
                        await asyncio.wait_for(stmt.fetch(k), 10)
                        with pytest.raises(asyncpg.PostgresError) as ei:
                            await asyncio.wait_for(conn.fetchval(
                                "SELECT count(*) FROM accounts WHERE id = $1", keys["shard0"][0]), 10)
                        assert ei.value.sqlstate.startswith("08") and "shard0" in str(ei.value)
                    finally:
                        await conn.close()
                return results
            assert asyncio.run(go()) == [1] * 12
            assert int(cluster.shards[1].primary.psql(
                "SELECT count(*) FROM accounts WHERE owner = 'up'")) == 8


# ------------------------------------------------------------ pipelined units

@pytest.mark.parametrize("shard", ["shard0", "shard1"])
def test_pipelined_describe_flush_then_bind_elsewhere_does_not_hang(env, shard):
    """asyncpg's prepare pattern sent in one write: the Describe's server may be on another
    shard than the Bind's; the Bind waits for the Describe's replies, not for a Sync."""
    proxy, cluster, keys = env
    for k in keys[shard][:3]:
        w = Wire(proxy.port, "trustu", "")
        try:
            parse = _msg(b"P", b"s1\0SELECT id FROM accounts WHERE id = $1\0"
                         + struct.pack("!hi", 1, 20))
            w.send(parse, _describe("s1"), FLUSH, _bind([str(k).encode()], "s1"), EXECUTE, SYNC)
            assert [t for t, _ in w.until(b"Z")] == [b"1", b"t", b"T", b"2", b"C", b"Z"]
        finally:
            w.close()


def test_sync_or_flush_with_a_body_is_an_error_then_the_session_goes_on(env):
    proxy, cluster, keys = env
    w = Wire(proxy.port, "trustu", "")
    try:
        w.send(_msg(b"S", b"xx"))
        got = w.until(b"Z")
        assert got[0][0] == b"E" and b"C08P01" in got[0][1] and got[-1] == (b"Z", b"I")
        k = keys["shard1"][5]
        # A Flush with a body: the statements before it run, then the error, then the
        # server skips to the Sync; nothing of the unit is committed.
        w.send(_parse("INSERT INTO accounts VALUES ($1, 'f', 0)"), _bind([str(k).encode()]),
               EXECUTE, _msg(b"H", b"x"), SYNC)
        got = w.until(b"Z")
        assert b"E" in [t for t, _ in got] and got[-1] == (b"Z", b"I")
        assert sum(_on_primaries(cluster, k).values()) == 0
        w.send(_query("SELECT 1"))
        assert w.until(b"Z")[-1] == (b"Z", b"I")
    finally:
        w.close()


async def test_null_shard_key_parameter_matches_no_row(env):
    proxy, cluster, keys = env
    conn = await asyncpg.connect(proxy.dsn())
    try:
        assert await conn.fetch("SELECT * FROM accounts WHERE id = $1::bigint", None) == []
        assert await conn.execute("DELETE FROM accounts WHERE id = $1", None) == "DELETE 0"
        assert await conn.fetch("SELECT 1 WHERE $1::int IS NULL /* shard_key_param: 1 */",
                                None) == [(1,)]
    finally:
        await conn.close()


async def test_pgshard_settings_over_the_extended_protocol(env):
    """asyncpg's fetch/fetchval use Parse/Bind/Execute: pgshard.* is answered by the proxy
    there too, never sent to PostgreSQL."""
    proxy, cluster, keys = env
    conn = await asyncpg.connect(proxy.dsn())
    try:
        assert await conn.fetchval("SHOW pgshard.shard_key") is None
        assert await conn.fetch("SET pgshard.shard_key = '42'") == []
        assert await conn.fetchval("SHOW pgshard.shard_key") == "42"
        # A write whose own key is not on key 42's shard is refused, never misplaced.
        ring = Ring.build([s.name for s in cluster.shards])
        other = "shard1" if ring.owner(hashing.token(b"42")) == "shard0" else "shard0"
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="SET pgshard.shard_key"):
            await conn.fetch("INSERT INTO accounts VALUES ($1, 'x', 0)", keys[other][4])
        await conn.fetch("RESET pgshard.shard_key")
        k = keys["shard1"][4]
        stmt = await conn.prepare("SHOW pgshard.consistency")
        assert [a.name for a in stmt.get_attributes()] == ["pgshard.consistency"]
        assert await stmt.fetchval() == "strong"
        await conn.fetch("SET pgshard.shard = 'shard1'")
        # The setting routes: a write pinned by it lands on shard1 only.
        await conn.fetch("INSERT INTO accounts VALUES ($1, 'x', 0)", k)
        assert _on_primaries(cluster, k) == {"shard0": 0, "shard1": 1}
        await conn.fetch("RESET pgshard.shard")
        assert await conn.fetchval("SHOW pgshard.shard") is None
        with pytest.raises(asyncpg.PostgresError) as ei:
            await conn.fetch("SET pgshard.shard = 'nosuch'")
        assert "nosuch" in str(ei.value)
        # The session goes on; ordinary statements on the unnamed portal are not confused.
        assert await conn.fetchval("SELECT count(*) FROM accounts WHERE id = $1", k) == 1
        await conn.execute("DELETE FROM accounts WHERE id = $1", k)
    finally:
        await conn.close()


def test_server_skipping_to_sync_is_never_pooled(env):
    """After an extended-protocol error the server ignores everything up to a Sync, even a
    Query: a client that leaves then must not hand that server to the next client."""
    proxy, cluster, keys = env
    for _ in range(2):
        _leave_mid_unit(proxy, [_parse("SELECT no_such_column FROM accounts"), FLUSH,
                                _query("SELECT 1")], reads=1)
        for shard in ("shard0", "shard1"):
            assert _next_client_works(proxy, keys[shard][2]) == 0


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_a_refusal_inside_a_transaction_looks_like_postgresql(env, prepare):
    """A refusal inside a transaction on a server fails the server's transaction too (it is
    raised there), yet reads like PostgreSQL's own error: no PL/pgSQL CONTEXT line."""
    proxy, cluster, keys = env
    a = keys["shard0"][5]
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        c.execute("BEGIN")
        c.execute(f"SELECT count(*) FROM accounts WHERE id = {a}")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            c.execute(f"UPDATE accounts SET id = id + 1 WHERE id = {a}", prepare=prepare)
        assert e.value.diag.context is None and e.value.diag.source_function is None
        assert "shard key column" in e.value.diag.message_primary
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        c.execute("ROLLBACK")
