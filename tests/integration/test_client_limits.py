"""Client limits on a real proxy: login timeout, max_client_conn counted from accept, idle and
idle-in-transaction timeouts, and the file-descriptor budget under a flood of silent sockets."""

from __future__ import annotations

import asyncio
import json
import re
import resource
import select
import socket
import struct
import time
import urllib.request

import asyncpg
import psycopg
import pytest

from pgshard.proxy.limits import REFUSAL_SLOTS
from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import USERS, _shards

# A trust user with a single server per shard: whoever holds it starves everyone else.
ONE = {"name": "one", "auth": "trust", "pool_size": 1}


def _startup(user: str = "trustu", database: str = "app") -> bytes:
    body = (struct.pack("!i", 196608) + b"user\0" + user.encode() + b"\0database\0"
            + database.encode() + b"\0\0")
    return struct.pack("!i", len(body) + 4) + body


def _query(sql: str) -> bytes:
    q = sql.encode() + b"\0"
    return b"Q" + struct.pack("!i", len(q) + 4) + q


class Wire:
    """A raw protocol client: messages with deadlines, nothing hidden."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def message(self, timeout: float = 5.0) -> tuple[bytes, bytes] | None:
        """The next (type, body), or None at EOF; raises TimeoutError after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 5:
                n = struct.unpack("!i", self.buf[1:5])[0]
                if len(self.buf) >= n + 1:
                    t, body, self.buf = self.buf[:1], self.buf[5:n + 1], self.buf[n + 1:]
                    return t, body
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete message in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buf += chunk

    def until(self, kind: bytes, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.message(max(deadline - time.monotonic(), 0.01))
            assert msg is not None, f"closed before a {kind!r} message"
            if msg[0] == b"E" and kind != b"E":
                raise AssertionError(f"error instead of {kind!r}: {_fields(msg[1])}")
            if msg[0] == kind:
                return msg[1]

    def login(self, user: str) -> None:
        self.send(_startup(user))
        self.key = self.until(b"K")          # BackendKeyData: pid, secret
        assert self.until(b"Z") == b"I"

    def run(self, sql: str) -> bytes:
        """Send a simple query; the transaction status of its ReadyForQuery."""
        self.send(_query(sql))
        return self.until(b"Z")

    def fatal(self, timeout: float) -> dict[str, str]:
        """Wait for the ErrorResponse the proxy closes this socket with; check it closes."""
        fields = _fields(self.until(b"E", timeout))
        assert self.message(5) is None, "still open after its FATAL error"
        return fields

    def is_quiet(self, seconds: float) -> bool:
        """Nothing arrives and the socket stays open for this long."""
        try:
            self.message(seconds)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


def _fields(body: bytes) -> dict[str, str]:
    return {chr(p[0]): p[1:].decode() for p in body.split(b"\0") if p}


def _proxy(pg_cluster, **proxy) -> ProxyProcess:
    cfg = {"proxy": {"database": "app", "pool_size": 2, **proxy},
           "users": [*USERS, ONE], "shards": _shards(pg_cluster)}
    return ProxyProcess(cfg)


# ------------------------------------------------------------------ client_login_timeout

@pytest.fixture(scope="module")
def login_proxy(pg_cluster, tls_pair):
    cert, key = tls_pair
    with _proxy(pg_cluster, client_login_timeout=1.0, tls_cert=str(cert),
                tls_key=str(key)) as p:
        yield p


@pytest.mark.parametrize("sent", [b"", _startup()[:6], _startup("md5u")],
                         ids=["silent", "half-startup", "stalled-auth"])
def test_login_timeout_closes_the_socket_with_an_error(login_proxy, sent):
    w = Wire(login_proxy.port)
    t0 = time.monotonic()
    w.send(sent)
    if sent.endswith(b"md5u\0database\0app\0\0"):
        assert w.until(b"R")[:4] == struct.pack("!i", 5)   # asked for an md5 password
    fields = w.fatal(timeout=6)
    took = time.monotonic() - t0
    assert fields["S"] == "FATAL" and fields["C"] == "08P01", fields
    assert "timeout" in fields["M"] and "client_login_timeout" in fields.get("D", "")
    assert 0.9 <= took < 4, took
    w.close()
    assert login_proxy.alive()


def test_login_timeout_during_the_tls_handshake(login_proxy):
    """Silent after the proxy said S: closed in time, with no plaintext inside TLS and no
    traceback in the log."""
    w = Wire(login_proxy.port)
    w.send(struct.pack("!ii", 8, 80877103))      # SSLRequest
    w.sock.settimeout(5)
    assert w.sock.recv(1) == b"S"
    t0 = time.monotonic()
    assert w.message(6) is None
    assert 0.9 <= time.monotonic() - t0 < 4
    w.close()
    time.sleep(0.2)
    log = login_proxy.log_path.read_text()
    assert "Traceback" not in log and '"ERROR"' not in log, log[-3000:]


async def test_login_timeout_spares_logged_in_clients(login_proxy):
    conn = await asyncpg.connect(login_proxy.dsn(), timeout=5)
    try:
        await asyncio.sleep(2.5)   # well past client_login_timeout
        assert await asyncio.wait_for(conn.fetchval("SELECT 41 + 1"), 5) == 42
    finally:
        await conn.close()


# ------------------------------------------------------------------ max_client_conn

MAX = 8


@pytest.fixture(scope="module")
def capped_proxy(pg_cluster):
    with _proxy(pg_cluster, max_client_conn=MAX) as p:
        yield p


async def _connect_all(p: ProxyProcess, n: int, deadline: float = 10.0) -> list:
    """n simultaneous logged-in asyncpg clients, retrying while earlier sockets drain."""
    end = time.monotonic() + deadline
    while True:
        conns = []
        try:
            for _ in range(n):
                conns.append(await asyncpg.connect(p.dsn(), timeout=5))
            return conns
        except asyncpg.TooManyConnectionsError:
            for c in conns:
                await c.close()
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.2)


async def test_max_client_conn_counts_sockets_from_accept(capped_proxy):
    p = capped_proxy
    time.sleep(0.5)   # the fixture's probe connection is counted until the proxy sees it go
    pending = [Wire(p.port) for _ in range(MAX)]      # accepted, never logged in
    time.sleep(0.3)
    extras = [Wire(p.port) for _ in range(5)]
    try:
        for w in extras:
            w.send(_startup())
            fields = _fields(w.until(b"E"))
            assert fields["C"] == "53300" and f"max_client_conn = {MAX}" in fields["M"], fields
            assert w.message(5) is None
        # A driver is told the same, in a form it trusts (after its SSL negotiation).
        with pytest.raises(asyncpg.TooManyConnectionsError):
            await asyncpg.connect(p.dsn(), timeout=5)
        with pytest.raises(psycopg.OperationalError, match="max_client_conn"):
            await psycopg.AsyncConnection.connect(p.dsn(), connect_timeout=5)
        # The pending sockets kept their places: one of them logs in now.
        pending[0].login("trustu")
        assert pending[0].run("SELECT 1") == b"I"
    finally:
        for w in pending + extras:
            w.close()
    conns = await _connect_all(p, MAX)
    for c in conns:
        await c.close()


def test_cancel_requests_are_served_when_full(capped_proxy):
    """As in PostgreSQL, a CancelRequest is honoured even with every slot taken."""
    p = capped_proxy
    time.sleep(0.3)
    busy = Wire(p.port)
    busy.login("trustu")
    busy.send(_query("SELECT pg_sleep(30) /* shard: shard0 */"))
    pending = [Wire(p.port) for _ in range(MAX - 1)]
    try:
        time.sleep(0.5)
        canceller = Wire(p.port)
        canceller.send(struct.pack("!ii", 16, 80877102) + busy.key)
        assert canceller.message(5) is None
        fields = _fields(busy.until(b"E", 5))
        assert fields["C"] == "57014", fields
        assert busy.until(b"Z") == b"I"
    finally:
        for w in [busy, *pending]:
            w.close()


async def test_max_client_conn_releases_every_count(capped_proxy):
    """Open and drop many sockets of every kind; afterwards exactly MAX clients fit."""
    p = capped_proxy
    time.sleep(0.5)   # the previous test's sockets are counted until the proxy sees them go
    for i in range(150):
        w = Wire(p.port)
        kind = i % 5
        if kind == 1:
            w.send(_startup()[:7])
        elif kind == 2:
            w.login("trustu")
            w.send(b"X\0\0\0\4")
        elif kind == 3:
            w.login("trustu")
            w.run("BEGIN")
        elif kind == 4:
            w.send(_startup("md5u"))
            w.until(b"R")
        w.close()
    # Bursts over the limit: refused sockets must be released too.
    for _ in range(3):
        burst = [Wire(p.port) for _ in range(MAX + 20)]
        for w in burst:
            w.close()
    time.sleep(0.5)   # as above: the proxy notices the last burst going
    conns = await _connect_all(p, MAX)
    try:
        with pytest.raises(asyncpg.TooManyConnectionsError):
            await asyncpg.connect(p.dsn(), timeout=5)
        assert [await c.fetchval("SELECT $1::int", i) for i, c in enumerate(conns)] \
            == list(range(MAX))
    finally:
        for c in conns:
            await c.close()


# ------------------------------------------------------------------ idle timeouts

IDLE_TXN = 1.0
IDLE = 2.5


@pytest.fixture(scope="module")
def idle_proxy(pg_cluster):
    with _proxy(pg_cluster, idle_transaction_timeout=IDLE_TXN, client_idle_timeout=IDLE,
                query_wait_timeout=20) as p:
        yield p


@pytest.fixture(scope="module")
def probe_table(pg_cluster):
    primary = pg_cluster.shards[0].primary
    primary.psql("DROP TABLE IF EXISTS limits_probe; CREATE TABLE limits_probe (x int)")
    return primary


async def test_idle_in_transaction_is_terminated_and_its_server_returned(idle_proxy,
                                                                         probe_table):
    w = Wire(idle_proxy.port)
    w.login("one")
    assert w.run("BEGIN") == b"T"
    assert w.run("INSERT INTO limits_probe VALUES (1) /* shard: shard0 */") == b"T"
    t0 = time.monotonic()
    # Another client of the same one-server pool waits for shard0's only server ...
    other = await asyncpg.connect(idle_proxy.dsn("one", ""), timeout=5)
    waiting = asyncio.ensure_future(other.fetchval("SELECT 7 /* shard: shard0 */"))
    fields = await asyncio.to_thread(w.fatal, 5)
    took = time.monotonic() - t0
    assert fields["S"] == "FATAL" and fields["C"] == "25P03", fields
    assert fields["M"] == "terminating connection due to idle-in-transaction timeout"
    assert IDLE_TXN * 0.9 <= took < IDLE_TXN + 3, took
    # ... and gets it once the idle transaction is rolled back.
    assert await asyncio.wait_for(waiting, 10) == 7
    await other.close()
    assert probe_table.psql("SELECT count(*) FROM limits_probe").strip() == "0"
    w.close()


def test_held_back_begin_counts_as_idle_in_transaction(idle_proxy):
    w = Wire(idle_proxy.port)
    w.login("one")
    assert w.run("BEGIN") == b"T"        # no server yet: BEGIN is held back
    assert w.fatal(IDLE_TXN + 3)["C"] == "25P03"
    w.close()


def test_a_running_statement_is_not_idle(idle_proxy):
    w = Wire(idle_proxy.port)
    w.login("one")
    assert w.run("BEGIN") == b"T"
    # Runs longer than idle_transaction_timeout, and outside one longer than the idle one.
    assert w.run(f"SELECT pg_sleep({IDLE_TXN * 2}) /* shard: shard1 */") == b"T"
    assert w.run("COMMIT") == b"I"
    assert w.run(f"SELECT pg_sleep({IDLE + 1}) /* shard: shard1 */") == b"I"
    assert w.run("SELECT 1") == b"I"
    w.close()


def test_idle_client_is_closed_after_client_idle_timeout(idle_proxy):
    w = Wire(idle_proxy.port)
    w.login("trustu")
    assert w.run("SELECT 1") == b"I"
    t0 = time.monotonic()
    assert w.is_quiet(IDLE * 0.8)
    fields = w.fatal(5)
    took = time.monotonic() - t0
    assert fields["S"] == "FATAL" and fields["C"] == "57P05", fields
    assert fields["M"] == "terminating connection due to idle-session timeout"
    assert IDLE * 0.9 <= took < IDLE + 3, took
    w.close()


def test_drivers_see_the_idle_in_transaction_error(idle_proxy):
    with psycopg.connect(idle_proxy.dsn("one", ""), connect_timeout=5) as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT 1 /* shard: shard0 */")
        time.sleep(IDLE_TXN + 1.5)
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout) as ei:
            conn.execute("SELECT 2 /* shard: shard0 */")
        assert ei.value.sqlstate == "25P03"
        assert conn.closed
    # Its server went back: the pool's only shard0 server serves the next client at once.
    with psycopg.connect(idle_proxy.dsn("one", ""), connect_timeout=5) as conn:
        conn.execute("SET statement_timeout = '5s'")
        assert conn.execute("SELECT 3 /* shard: shard0 */").fetchone() == (3,)


# ------------------------------------------------------------------ the fd budget

NOFILE = 256
FLOOD = 300


def _low_nofile():
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def _health(api_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/health", timeout=5) as r:
        json.loads(r.read())
        return r.status


async def test_fd_budget_refuses_a_flood_cleanly(pg_cluster):
    cfg = {"proxy": {"database": "app", "pool_size": 2, "client_login_timeout": 120},
           "users": [{"name": "app", "password": "app-secret"}],
           "shards": _shards(pg_cluster)}
    p = ProxyProcess(cfg, preexec_fn=_low_nofile)
    with p:
        budget = int(re.search(r"budget (\d+) client sockets", p.log_path.read_text()).group(1))
        assert 0 < budget < FLOOD - REFUSAL_SLOTS, budget
        time.sleep(0.5)   # the fixture's probe connection is counted until the proxy sees it go
        flood = [Wire(p.port) for _ in range(FLOOD)]
        try:
            time.sleep(1.0)
            assert p.alive()
            # Beyond the budget and the refusal slots: 53300 at once, and closed.
            poller = select.poll()
            for w in flood:
                poller.register(w.sock, select.POLLIN)
            ready = {fd for fd, _ in poller.poll(0)}
            at_once = [w for w in flood if w.sock.fileno() in ready]
            held = [w for w in flood if w.sock.fileno() not in ready]
            assert len(at_once) == FLOOD - budget - REFUSAL_SLOTS, (len(at_once), budget)
            for w in at_once:
                assert w.fatal(1)["C"] == "53300"
            # The control plane still has descriptors.
            assert _health(p.api_port) == 200
            # The held sockets: the first `budget` are clients being authenticated, the
            # others are answered 53300 after their startup packet, as drivers expect.
            answers = []
            for w in held:
                w.send(_startup("app"))
                msg = w.message(5)
                answers.append("auth" if msg[0] == b"R" else _fields(msg[1])["C"])
            assert answers == ["auth"] * budget + ["53300"] * REFUSAL_SLOTS, answers
            with pytest.raises((asyncpg.TooManyConnectionsError, ConnectionError, OSError)):
                await asyncpg.connect(p.dsn(), timeout=5)
            log = p.log_path.read_text()
            budget_lines = [ln for ln in log.splitlines() if "file-descriptor budget of" in ln
                            and "refusing clients" in ln]
            assert len(budget_lines) == 1, log
        finally:
            for w in flood:
                w.close()
        conn = None
        deadline = time.monotonic() + 10
        while conn is None:
            try:
                conn = await asyncpg.connect(p.dsn(), timeout=5)
            except (asyncpg.TooManyConnectionsError, ConnectionError):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
        assert _health(p.api_port) == 200
        log = p.log_path.read_text()
        assert "Too many open files" not in log and "Traceback" not in log, log
        assert p.alive()
