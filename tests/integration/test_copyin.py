"""COPY FROM STDIN split over two real shards (pgshard.proxy.copyin) on a MultiTxn's held
servers (real pools), committed with two-phase commit: every row on its owner, checked on
each primary directly; a failing shard fails the COPY and leaves nothing anywhere."""

from __future__ import annotations

import asyncio
import struct
import tempfile

import asyncpg
import pytest

from pgshard.config import config_from_dict
from pgshard.protocol.copyrows import BINARY_SIGNATURE, CopySplitter
from pgshard.protocol.errors import PgError
from pgshard.protocol.values import INT8
from pgshard.proxy.copyin import CopyFanout
from pgshard.proxy.decisions import DecisionLog
from pgshard.proxy.listener import Proxy
from pgshard.proxy.scatter import MultiTxn
from pgshard.proxy.twophase import Coordinator, make_run
from pgshard.sql.copy_stmt import parse_copy_in
from pgshard.store import open_store
from tests.fixtures.clusters import temp_cluster
from tests.fixtures.runtime import shards_of
from tests.fixtures.twophase import TxnOwner, fetch_ids, prepared_gids

N = 300


@pytest.fixture(scope="module")
def cluster():
    with temp_cluster(shards=2, replicas=0) as c:
        for s in c.shards:
            s.primary.psql("CREATE TABLE items (id bigint PRIMARY KEY, v text)")
        yield c


@pytest.fixture()
def env(cluster):
    for s in cluster.shards:
        s.primary.psql("TRUNCATE items")
    proxy = Proxy(config_from_dict({"proxy": {"database": "app"},
                                    "shards": shards_of(cluster),
                                    "tables": [{"name": "items", "shard_key": "id"}]}))
    return cluster, proxy


def text_payload():
    return b"".join(f"{i}\tvalue {i}\\twith tab\n".encode() for i in range(N))


def csv_payload():
    return b"id,v\n" + b"".join(f'{i},"line {i}\nsecond, part"\n'.encode() for i in range(N))


def binary_payload():
    out = BINARY_SIGNATURE + struct.pack("!ii", 0, 0)
    for i in range(N):
        v = f"b{i}".encode()
        out += struct.pack("!hiqi", 2, 8, i, len(v)) + v
    return out + b"\xff\xff"


async def copy_in(proxy, sql, payload, chunk=777, key_oid=INT8):
    catalog = proxy.catalog
    stmt = parse_copy_in(sql)
    shards = [sh.name for sh in catalog.shards]
    multi = MultiTxn(TxnOwner(proxy), shards)
    await multi.open("BEGIN")
    splitter = CopySplitter(stmt.splitter_format("id"), stmt.key_index("id", ["id", "v"]),
                            key_oid)
    copy = CopyFanout(multi, sql, splitter, lambda key: catalog.shard_for_key(key).name,
                      batch_bytes=1024)
    return multi, copy, [payload[i:i + chunk] for i in range(0, len(payload), chunk)]


@pytest.mark.parametrize("sql, payload", [
    ("COPY items FROM STDIN", text_payload()),
    ("COPY items (id, v) FROM STDIN WITH (FORMAT csv, HEADER)", csv_payload()),
    ("COPY items FROM STDIN WITH (FORMAT binary)", binary_payload()),
])
async def test_copy_rows_land_on_their_owners(env, sql, payload):
    cluster, proxy = env
    store = await open_store(f"sqlite://{tempfile.mkdtemp(prefix='pgshard-copy-')}/m.db")
    try:
        multi, copy, chunks = await copy_in(proxy, sql, payload)
        await copy.start()
        resp = copy.in_response
        assert resp[:1] == b"G" and resp[5] == (1 if "binary" in sql else 0)
        assert struct.unpack("!h", resp[6:8])[0] == 2            # two columns
        for c in chunks:
            await copy.data(c)
        assert await copy.done() == N
        coord = Coordinator(DecisionLog(store), "copytest")
        await coord.commit(coord.new_txn_id(), multi.shards, make_run(multi))
        await coord.drain()
        multi.release()
    finally:
        await proxy.stop()
        await store.close()
    seen = []
    for s in cluster.shards:
        ids = await fetch_ids(s.primary.dsn, "items")
        assert ids, f"{s.name} got no rows"
        assert all(proxy.catalog.shard_for_key(str(i).encode()).name == s.name for i in ids)
        assert not await prepared_gids(s.primary.dsn)
        seen += ids
    assert sorted(seen) == list(range(N))
    if "csv" in sql:
        conn = await asyncpg.connect(cluster.shards[0].primary.dsn)
        v = await conn.fetchval("SELECT v FROM items LIMIT 1")
        await conn.close()
        assert v.endswith("\nsecond, part")


async def test_a_failing_shard_fails_the_copy_and_nothing_stays(env):
    cluster, proxy = env
    # A row already on its owner: the COPY's copy of it violates the primary key there.
    dup = next(i for i in range(N) if proxy.catalog.shard_for_key(str(i).encode()).name
               == "shard1")
    cluster.shards[1].primary.psql(f"INSERT INTO items VALUES ({dup}, 'already')")
    try:
        multi, copy, chunks = await copy_in(proxy, "COPY items FROM STDIN", text_payload())
        await copy.start()
        with pytest.raises(PgError) as err:
            for c in chunks:
                await copy.data(c)
                await asyncio.sleep(0)
            await copy.done()
        await copy.fail("aborted")
        await make_run(multi)({sh: "ROLLBACK" for sh in multi.shards})
        multi.release()
    finally:
        await proxy.stop()
    assert err.value.sqlstate == "23505" and err.value.message.startswith("shard1: ")
    assert await fetch_ids(cluster.shards[0].primary.dsn, "items") == []
    assert await fetch_ids(cluster.shards[1].primary.dsn, "items") == [dup]


async def test_copy_refused_by_the_shards_is_an_error_named_after_one(env):
    _, proxy = env
    try:
        multi, copy, _ = await copy_in(proxy, "COPY nosuch FROM STDIN", b"")
        with pytest.raises(PgError) as err:
            await copy.start()
        multi.release(abort=True)
    finally:
        await proxy.stop()
    assert err.value.sqlstate == "42P01" and err.value.message.startswith("shard")



async def test_a_large_copy_streams_through(env):
    """Megabytes of rows in 64 KiB payloads: the shards' sockets fill and are waited for."""
    cluster, proxy = env
    n = 100_000
    payload = b"".join(f"{i}\t{'x' * 40}\n".encode() for i in range(n))
    try:
        multi, copy, _ = await copy_in(proxy, "COPY items FROM STDIN", payload)
        await copy.start()
        for i in range(0, len(payload), 65536):
            await copy.data(payload[i:i + 65536])
        assert await copy.done() == n
        await make_run(multi)({sh: "COMMIT" for sh in multi.shards})
        multi.release()
    finally:
        await proxy.stop()
    counts = []
    for s in cluster.shards:
        conn = await asyncpg.connect(s.primary.dsn)
        counts.append(await conn.fetchval("SELECT count(*) FROM items"))
        await conn.close()
    assert sum(counts) == n and all(counts)
