"""Memory stays bounded by bytes: caches hold at most their byte budgets whatever the
statements' size, and a fan-out read streams at the pace the client reads (with ORDER BY
too), LIMIT stops it and gives the servers back clean.

The proxy's memory is read from /proc/<pid>/status (VmRSS now, VmHWM the peak since it
was reset through /proc/<pid>/clear_refs) of the `pgshard serve` subprocess."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
import urllib.request

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import _shards

MB = 1024 * 1024
PER_SHARD = 150_000          # rows on each of the 2 shards
PAD = 150                    # bytes of text per row: ~50 MB of DataRows in all
STATEMENT_BUDGET = 8 * MB
PLAN_BUDGET = 8 * MB
FANOUT_BUDGET = 2 * MB


# -- memory of the proxy process ------------------------------------------------------------

def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def rss_mb(proxy: ProxyProcess) -> float:
    return _status_kb(proxy.proc.pid, "VmRSS") / 1024


def reset_peak(proxy: ProxyProcess) -> None:
    with open(f"/proc/{proxy.proc.pid}/clear_refs", "w") as f:
        f.write("5")   # resets VmHWM to the current RSS


def peak_mb(proxy: ProxyProcess) -> float:
    return _status_kb(proxy.proc.pid, "VmHWM") / 1024


def cache_gauges(proxy: ProxyProcess) -> dict[str, dict[str, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.api_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name in ("pgshard_cache_bytes", "pgshard_cache_max_bytes",
                        "pgshard_cache_entries"):
            for s in fam.samples:
                out.setdefault(s.labels["cache"], {})[fam.name] = s.value
    return out


# -- a raw wire client ----------------------------------------------------------------------

class Wire:
    """A PostgreSQL v3 client on a plain socket, with a small receive buffer so that not
    reading really leaves the bytes with the proxy. Every read has a deadline."""

    def __init__(self, port: int, user: str, timeout: float = 30):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = bytearray()
        self.pos = 0
        body = struct.pack("!i", 196608) + b"user\0" + user.encode() + b"\0database\0app\0\0"
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        self.until_ready()

    def close(self) -> None:
        try:
            self.sock.sendall(b"X\0\0\0\4")
        except OSError:
            pass
        self.sock.close()

    def send(self, *msgs: bytes) -> None:
        self.sock.sendall(b"".join(msgs))

    def message(self) -> tuple[int, bytes]:
        while True:
            avail = len(self.buf) - self.pos
            if avail >= 5:
                n = struct.unpack_from("!i", self.buf, self.pos + 1)[0]
                if avail >= n + 1:
                    t = self.buf[self.pos]
                    body = bytes(self.buf[self.pos + 5:self.pos + 1 + n])
                    self.pos += n + 1
                    if self.pos > 1 << 20:
                        del self.buf[:self.pos]
                        self.pos = 0
                    return t, body
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise AssertionError("the proxy closed the connection")
            self.buf += chunk

    def until_ready(self) -> list[tuple[int, bytes]]:
        """Messages up to ReadyForQuery; an ErrorResponse fails the test."""
        out = []
        while True:
            t, body = self.message()
            if t == 0x45:
                raise AssertionError(f"error from the proxy: {body!r}")
            if t == 0x5A:
                return out
            out.append((t, body))


def query(sql: str) -> bytes:
    b = sql.encode() + b"\0"
    return b"Q" + struct.pack("!i", len(b) + 4) + b


def parse(sql: str) -> bytes:
    b = b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0)
    return b"P" + struct.pack("!i", len(b) + 4) + b


def bind_binary() -> bytes:
    b = b"\0\0" + struct.pack("!hhhh", 0, 0, 1, 1)   # no params, all results binary
    return b"B" + struct.pack("!i", len(b) + 4) + b


EXECUTE = b"E" + struct.pack("!i", 9) + b"\0" + struct.pack("!i", 0)
SYNC = b"S\0\0\0\4"


def first_column(body: bytes, binary: bool) -> int:
    (n,) = struct.unpack_from("!i", body, 2)
    v = body[6:6 + n]
    return struct.unpack("!q", v)[0] if binary else int(v)


# -- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_table(pg_cluster):
    """fs_big on both primaries: ids 1..150000 on shard0, 150001..300000 on shard1 (placed
    for volume, not by the ring: only keyless reads are used here)."""
    for i, s in enumerate(pg_cluster.shards):
        lo = i * PER_SHARD + 1
        s.primary.psql(
            "DROP TABLE IF EXISTS fs_big; "
            "CREATE TABLE fs_big (id bigint PRIMARY KEY, pad text); "
            f"INSERT INTO fs_big SELECT g, repeat('x', {PAD}) "
            f"FROM generate_series({lo}, {lo + PER_SHARD - 1}) g; ANALYZE fs_big")
    yield pg_cluster
    for s in pg_cluster.shards:
        s.primary.psql("DROP TABLE IF EXISTS fs_big")


@pytest.fixture(scope="module")
def proxy_small(big_table):
    # pool_size 1 for everyone (pools are per server user, which all users share here): a
    # server left mid-reply would be the next statement's only server.
    users = [{"name": "wire", "auth": "trust"}, {"name": "solo", "auth": "trust"}]
    cfg = {"proxy": {"database": "app", "pool_size": 1, "max_message_size": 4 * MB,
                     "statement_cache_bytes": STATEMENT_BUDGET,
                     "plan_cache_bytes": PLAN_BUDGET,
                     "fanout_buffer_bytes": FANOUT_BUDGET},
           "users": users, "shards": _shards(big_table),
           "tables": [{"name": "fs_big", "shard_key": "id"}]}
    with ProxyProcess(cfg) as p:
        yield p


# -- (a) caches bounded by bytes ------------------------------------------------------------

def test_caches_stay_under_their_byte_budgets(proxy_small):
    w = Wire(proxy_small.port, "wire")
    try:
        def one_round(i: int, size: int) -> None:
            pad = "y" * size
            # An unnamed Parse (kept in the statement cache) and a hinted simple query.
            w.send(parse(f"SELECT {i} AS n, '{pad}' AS pad"), SYNC)
            msgs = w.until_ready()
            assert [t for t, _ in msgs] == [0x31]
            w.send(query(f"SELECT {i} AS n, length('{pad}') /* shard_key: {i} */"))
            rows = [b for t, b in w.until_ready() if t == 0x44]
            assert len(rows) == 1 and first_column(rows[0], False) == i

        for i in range(3):
            one_round(i, 1000)            # warm up every code path
        before = rss_mb(proxy_small)
        reset_peak(proxy_small)
        for i in range(150):
            one_round(1000 + i, MB)       # 150 distinct 1 MB Parses + 150 1 MB queries
        after = rss_mb(proxy_small)
        peak = peak_mb(proxy_small)
        gauges = cache_gauges(proxy_small)
    finally:
        w.close()
    for name, g in gauges.items():
        assert g["pgshard_cache_bytes"] <= g["pgshard_cache_max_bytes"], (name, g)
    assert gauges["statements"]["pgshard_cache_max_bytes"] == STATEMENT_BUDGET
    # The last few 1 MB statements are cached (the budget holds a few of them), not 150.
    assert 1 <= gauges["statements"]["pgshard_cache_entries"] < 20
    # 300 MB of distinct SQL went through; what stays is the budgets plus transients.
    assert after - before < 60, (before, after)
    assert peak - before < 100, (before, peak)


# -- (b) fan-out reads stream with backpressure ---------------------------------------------

STREAM_CASES = {
    "concat-text": ([query("SELECT id, pad FROM fs_big")], False, False),
    "order-text": ([query("SELECT id, pad FROM fs_big ORDER BY id")], True, False),
    "order-desc-binary": ([parse("SELECT id, pad FROM fs_big ORDER BY id DESC"),
                           bind_binary(), EXECUTE, SYNC], True, True),
}


@pytest.mark.parametrize("case", list(STREAM_CASES))
def test_fanout_read_waits_for_a_client_that_does_not_read(proxy_small, case):
    msgs, ordered, binary = STREAM_CASES[case]
    w = Wire(proxy_small.port, "wire", timeout=60)
    try:
        w.send(query("SELECT count(*) FROM fs_big"))   # warm up the fan-out path
        w.until_ready()
        before = rss_mb(proxy_small)
        reset_peak(proxy_small)
        w.send(*msgs)
        time.sleep(4)                    # read nothing: the proxy must not buffer it all
        stalled = peak_mb(proxy_small)
        ids = []
        tag = None
        while True:
            t, body = w.message()
            if t == 0x44:
                ids.append(first_column(body, binary))
            elif t == 0x43:
                tag = body.rstrip(b"\0").decode()
            elif t == 0x45:
                raise AssertionError(f"error: {body!r}")
            elif t == 0x5A:
                break
        done = peak_mb(proxy_small)
    finally:
        w.close()
    total = 2 * PER_SHARD
    assert tag == f"SELECT {total}"
    assert len(ids) == total and set(ids) == set(range(1, total + 1))   # each exactly once
    if ordered:
        expect = list(range(1, total + 1))
        assert ids == (expect[::-1] if "desc" in case else expect)
    # ~50 MB of rows went through; the proxy held a bounded window of them.
    assert stalled - before < 60, (before, stalled)
    assert done - before < 60, (before, done)


# -- (c) LIMIT stops reading; servers go back clean ------------------------------------------

async def _backend_pids(conn) -> dict[str, int]:
    return {sh: await conn.fetchval(f"/* shard: {sh} */ SELECT pg_backend_pid()")
            for sh in ("shard0", "shard1")}


async def test_fanout_limit_returns_right_rows_and_clean_servers(proxy_small):
    async def body():
        conn = await asyncpg.connect(host="127.0.0.1", port=proxy_small.port, user="solo",
                                     database="app")
        try:
            pids = await _backend_pids(conn)
            total = 2 * PER_SHARD
            # Ordered with OFFSET, binary results (asyncpg), both directions.
            rows = await conn.fetch("SELECT id FROM fs_big ORDER BY id LIMIT 5 OFFSET 3")
            assert [r["id"] for r in rows] == [4, 5, 6, 7, 8]
            rows = await conn.fetch("SELECT id FROM fs_big ORDER BY id DESC LIMIT 4 OFFSET 2")
            assert [r["id"] for r in rows] == [total - 2, total - 3, total - 4, total - 5]
            # Unordered: any 7 distinct rows of the table.
            rows = await conn.fetch("SELECT id FROM fs_big LIMIT 7")
            got = [r["id"] for r in rows]
            assert len(got) == 7 == len(set(got)) and all(1 <= i <= total for i in got)
            # A LIMIT met by shard0 alone while shard1 is paused mid-reply, with many rows
            # still to come: shard1's server must be read to its end, not handed back dirty.
            rows = await conn.fetch("SELECT id, pad FROM fs_big ORDER BY id LIMIT 100000")
            assert [r["id"] for r in rows] == list(range(1, 100_001))
            # The simple protocol too (psql-like text results).
            status = await conn.execute("SELECT id FROM fs_big ORDER BY id DESC LIMIT 3")
            assert status == "SELECT 3"
            # pool_size 1: these run on the very servers the LIMITs used, which were clean
            # (drained, not closed: the same backends answer).
            assert await conn.fetchval("SELECT count(*) FROM fs_big") == total
            assert await _backend_pids(conn) == pids
            assert await conn.fetchval("SELECT pad FROM fs_big WHERE id = 3 /* shard: shard0 */"
                                       ) == "x" * PAD
        finally:
            await conn.close()

    await asyncio.wait_for(body(), 120)


async def test_limit_then_client_leaves_mid_stream(proxy_small):
    """A client that disconnects while a fan-out read is paused leaves no server behind."""
    w = Wire(proxy_small.port, "solo")
    w.send(query("SELECT id, pad FROM fs_big ORDER BY id"))
    await asyncio.sleep(1)
    w.sock.close()

    async def after():
        conn = await asyncpg.connect(host="127.0.0.1", port=proxy_small.port, user="solo",
                                     database="app")
        try:
            assert await conn.fetchval("SELECT count(*) FROM fs_big") == 2 * PER_SHARD
        finally:
            await conn.close()

    await asyncio.wait_for(after(), 60)


async def test_error_mid_stream_is_reported_and_servers_come_back(proxy_small):
    """shard1 fails after ~100k of its rows (and shard0's rows already went out): the
    client gets shard1's error, and the next statements run on the same, drained servers."""
    async def body():
        conn = await asyncpg.connect(host="127.0.0.1", port=proxy_small.port, user="solo",
                                     database="app")
        try:
            pids = await _backend_pids(conn)
            for sql in ("SELECT id, 1 / (id - 250000) AS x FROM fs_big",
                        "SELECT id, 1 / (id - 250000) AS x FROM fs_big ORDER BY id"):
                with pytest.raises(asyncpg.DivisionByZeroError, match="shard1"):
                    await conn.fetch(sql)
            w = Wire(proxy_small.port, "solo")
            try:
                w.send(query("SELECT id, 1 / (id - 250000) AS x FROM fs_big ORDER BY id DESC"))
                seen, err = 0, None
                while True:
                    t, msg = w.message()
                    if t == 0x44:
                        seen += 1
                    elif t == 0x45:
                        err = msg
                    elif t == 0x5A:
                        break
                assert err is not None and b"22012" in err and b"shard1: division" in err
                # DESC: shard1 streams 300000 down to 250001 before it fails; all of them
                # (or fewer, if shard0 is merged in) went out before the error, none after.
                assert 0 < seen <= 50_000
                w.send(query("SELECT count(*) FROM fs_big"))
                rows = [b for t, b in w.until_ready() if t == 0x44]
                assert first_column(rows[0], False) == 2 * PER_SHARD
            finally:
                w.close()
            assert await _backend_pids(conn) == pids
        finally:
            await conn.close()

    await asyncio.wait_for(body(), 120)


def test_statement_in_a_multi_shard_transaction_streams_too(proxy_small):
    """Inside BEGIN … DDL (a transaction held on every shard) a one-shard statement is
    relayed as its server answers, with the same backpressure."""
    w = Wire(proxy_small.port, "wire", timeout=60)
    try:
        w.send(query("BEGIN"))
        w.until_ready()
        w.send(query("CREATE TABLE fs_txn_tmp (id bigint PRIMARY KEY)"))
        w.until_ready()
        before = rss_mb(proxy_small)
        reset_peak(proxy_small)
        w.send(query(f"SELECT g, repeat('z', {PAD}) FROM generate_series(1, 300000) g"))
        time.sleep(4)
        stalled = peak_mb(proxy_small)
        got = [first_column(b, False) for t, b in w.until_ready() if t == 0x44]
        w.send(query("ROLLBACK"))
        w.until_ready()
    finally:
        w.close()
    assert got == list(range(1, 300_001))
    assert stalled - before < 60, (before, stalled)
