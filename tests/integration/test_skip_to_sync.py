"""After an extended-protocol error the session skips every message up to the client's Sync,
a Query for another shard included, and answers that Sync (the wire fuzz's seed 128410278
hung here: the proxy raised its cross-shard error through a server that ignored it)."""

from __future__ import annotations

import asyncio
import time

from pgshard.protocol import messages as m
from tests.integration.test_wire_fuzz import DEADLINE, RAW_USERS, RawConn, fuzz_proxy  # noqa: F401

PROBE = 69213   # the key the Query after the error routes by


def _unit(sql: str) -> bytes:
    return m.parse("", sql) + m.bind("", "") + m.execute()


def _placement(pg_cluster, keys) -> dict[int, int]:
    """key -> index of the shard that holds its row (the rows are made by the test)."""
    where = {}
    for i, s in enumerate(pg_cluster.shards):
        for line in s.primary.psql("SELECT id FROM fz").split():
            where[int(line)] = i
    return {k: where[k] for k in keys}


async def _simple(c: RawConn, sql: str) -> list[str]:
    await c.send(m.query(sql))
    end = time.monotonic() + DEADLINE
    got = []
    while True:
        t, _ = await c.read(end)
        got.append(t.decode())
        if t == b"Z":
            return got


async def _after_error(port: int, key: int, i: int) -> str:
    """A transaction opened on key's shard, an Execute that fails there, a Query for PROBE's
    shard before the Sync: the reply types, up to the Z of a final SELECT (or HANG)."""
    name, pw = RAW_USERS[i % 2]
    c = await RawConn.open(port, name, pw)
    token = f"tok{i}"
    try:
        await c.send(_unit("BEGIN") + _unit(f"INSERT INTO fz (id, v) VALUES ({key}, 'a') "
                                                "ON CONFLICT (id) DO NOTHING")
                     + m.SYNC
                     + m.execute()   # the INSERT's portal, run to completion: 55000
                     + m.query(f"SELECT 1 /* shard_key: {PROBE} */")   # skipped
                     + _unit(f"SELECT v FROM fz WHERE id = {PROBE}")     # skipped
                     + m.SYNC + m.query("ROLLBACK") + m.query(f"SELECT '{token}'"))
        end = time.monotonic() + DEADLINE
        got = []
        try:
            while True:
                t, body = await c.read(end)
                got.append(t.decode())
                if t == b"Z" and got.count("D") == 1:
                    return "".join(got)
        except TimeoutError:
            return "HANG " + "".join(got)
    finally:
        c.close()


def test_query_for_another_shard_after_an_extended_error(fuzz_proxy, pg_cluster):  # noqa: F811
    keys = list(range(1, 17)) + [PROBE]

    async def setup():
        c = await RawConn.open(fuzz_proxy.port, *RAW_USERS[0])
        try:
            for k in keys:
                assert (await _simple(c, f"INSERT INTO fz (id, v) VALUES ({k}, 'x')"))[-2:] \
                    == ["C", "Z"]
        finally:
            c.close()

    asyncio.run(setup())
    where = _placement(pg_cluster, keys)
    other = [k for k in keys[:-1] if where[k] != where[PROBE]]
    same = [k for k in keys[:-1] if where[k] == where[PROBE]]
    assert other and same, where   # both cases are run

    async def run():
        return [await _after_error(fuzz_proxy.port, k, i)
                for i, k in enumerate(other[:2] + same[:2])]

    got = asyncio.run(run())
    # PostgreSQL's answer: the unit, its Z; the 55000; everything to the Sync skipped, its Z
    # (the transaction failed); ROLLBACK; the SELECT.
    want = "12C12C" + "Z" + "E" + "Z" + "CZ" + "TDCZ"
    assert got == [want] * len(got), (where, got)
