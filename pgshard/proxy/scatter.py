"""Scatter-gather: run one unit of work on several shards at once and combine the
replies: DDL everywhere (they must agree), INSERTs split per shard (counts summed), the
transaction held on every shard. Reads are streamed instead (fanread).

Strategy: every shard gets the same messages, so every shard's reply has the same shape
(ParseComplete?, BindComplete?, RowDescription?, DataRow*, CommandComplete, ReadyForQuery).
The first shard's reply is the template. Nothing is sent to the client until every shard
answered, so an error on any shard is reported alone, named after its shard; these
replies are small (command tags, RETURNING rows of one statement).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from pgshard.protocol import messages as m
from pgshard.protocol.errors import ConnectionFailure
from pgshard.protocol.framing import BACKEND_TYPES, FrameBuffer
from pgshard.proxy.backend import ServerClient
from pgshard.proxy.fanread import shard_error
from pgshard.sql.merge import decode_row

__all__ = ["Collector", "agree", "decode_row", "first_error", "merge_counts", "run_on_shards",
           "servers_for"]


class Collector(ServerClient):
    """Stands in for a client while a server answers a fan-out unit."""

    def __init__(self, pool):
        self.pool = pool
        self.chunks: list[bytes] = []
        self.done = asyncio.get_running_loop().create_future()

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def server_idle(self, server) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def server_lost(self, server, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionFailure(f"lost the server connection: {reason}"))


    def frames(self) -> list[tuple[int, bytes]]:
        fb = FrameBuffer(allowed=BACKEND_TYPES)
        fb.feed(b"".join(self.chunks))
        out = []
        while (msg := fb.next_frame()) is not None:
            out.append(msg)
        return out


@contextlib.asynccontextmanager
async def servers_for(session, shards: list[str]):
    """A server of every shard, as [(pool, server)], released when the block ends (a
    server not back at an idle point is closed by its pool, never reused)."""
    pools = [session.proxy.pool_for(sh, session.user, database=session.database)
             for sh in shards]
    servers = await asyncio.gather(*(p.acquire() for p in pools), return_exceptions=True)
    try:
        failed = next((s for s in servers if isinstance(s, BaseException)), None)
        if failed is not None:
            raise failed
        session.fan_servers = list(servers)
        yield list(zip(pools, servers, strict=True))
    finally:
        session.fan_servers = []
        for pool, s in zip(pools, servers, strict=True):
            if not isinstance(s, BaseException):
                pool.release(s)


async def run_on_shards(session, shards: list[str], emit) -> list[list[tuple[int, bytes]]]:
    """Send one unit to a server of every shard in parallel; the replies, per shard.
    emit(server, i) queues the unit's messages for shards[i] and their expectations."""
    async with servers_for(session, shards) as servers:
        collectors = []
        for i, (pool, s) in enumerate(servers):
            c = Collector(pool)
            collectors.append(c)
            s.link(c)
            session.settings.sync(s)
            emit(s, i)
            s.flush()
        await asyncio.gather(*(c.done for c in collectors))
    return [c.frames() for c in collectors]


class MultiTxn:
    """One transaction held open on several shards: DDL inside BEGIN … COMMIT, a
    transaction whose statements reach a second shard, a write that spans shards.

    Strategy: every shard it reaches runs the same BEGIN (opened on first use, see
    ensure); statements go to the shards they concern; the session commits it with
    two-phase commit when it holds more than one shard (proxy.twophase), else with a plain
    COMMIT. An error on any shard fails the whole transaction (as on one database): only
    ROLLBACK is accepted."""

    def __init__(self, session, shards: list[str], begin_sql: str = "BEGIN"):
        self.session = session
        self.shards = shards          # the shards it holds a server of, in the order reached
        self.servers: dict[str, tuple] = {}
        self.failed = False
        self.begin_sql = begin_sql
        self.implicit = False         # the transaction of one statement: it ends with it
        self.started = time.monotonic()   # the newest of a deadlock's transactions gives way

    def adopt(self, shard: str, server) -> None:
        """A server already inside this transaction (it ran its first statements)."""
        self.servers[shard] = (server.pool, server)
        if shard not in self.shards:
            self.shards.append(shard)

    async def ensure(self, shards: list[str]) -> None:
        """Open the transaction on each of shards it does not hold yet."""
        new = [sh for sh in shards if sh not in self.servers]
        if not new:
            return
        pools = [self.session.proxy.pool_for(sh, self.session.user,
                                             database=self.session.database)
                 for sh in new]
        # A server the client keeps parked (its session state) serves its shard here: one
        # from the pool could wait for that very server (a pool of one).
        parked = getattr(self.session, "parked", None) or {}
        mine = [parked.pop((sh, "primary"), None) for sh in new]
        got = await asyncio.gather(*(p.acquire() if m is None else _ready(m)
                                     for p, m in zip(pools, mine, strict=True)),
                                   return_exceptions=True)
        for sh, pool, s in zip(new, pools, got, strict=True):
            if not isinstance(s, BaseException):
                self.servers[sh] = (pool, s)
                if sh not in self.shards:
                    self.shards.append(sh)
        bad = next((s for s in got if isinstance(s, BaseException)), None)
        if bad is not None:
            self.failed = True
            raise bad
        # A shard joining late makes the savepoints the others have (TxnState.savepoints).
        msg = m.query("; ".join([self.begin_sql, *self.session.txn.savepoints]))
        from pgshard.proxy.backend import X_QUERY

        def emit(s, i):
            s.send(msg)
            s.push(X_QUERY)
        err = first_error(new, await self.run(new, emit))
        if err is not None:
            self.failed = True
            raise m.error_to_exception(err[5:])

    async def open(self, begin_sql: str) -> list:
        pools = [self.session.proxy.pool_for(sh, self.session.user,
                                             database=self.session.database)
                 for sh in self.shards]
        got = await asyncio.gather(*(p.acquire() for p in pools), return_exceptions=True)
        for sh, pool, s in zip(self.shards, pools, got, strict=True):
            if not isinstance(s, BaseException):
                self.servers[sh] = (pool, s)
        bad = next((s for s in got if isinstance(s, BaseException)), None)
        if bad is not None:
            self.release(abort=False)
            raise bad
        msg = m.query(begin_sql)
        from pgshard.proxy.backend import X_QUERY

        def emit(s, i):
            s.send(msg)
            s.push(X_QUERY)
        return await self.run(self.shards, emit)

    async def run(self, shards: list[str], emit) -> list[list[tuple[int, bytes]]]:
        if any(sh not in self.servers for sh in shards):
            await self.ensure(shards)
        collectors = []
        for i, sh in enumerate(shards):
            pool, s = self.servers[sh]
            c = Collector(pool)
            collectors.append(c)
            s.link(c)
            self.session.settings.sync(s)
            emit(s, i)
            s.flush()
        await asyncio.gather(*(c.done for c in collectors))
        return [c.frames() for c in collectors]

    def release(self, abort: bool = False, keep=None) -> None:
        """Give the servers back; keep(shard, server) takes one that holds session state of
        the client (sql.sticky) instead."""
        for sh, (pool, s) in self.servers.items():
            if abort:
                s.abort("multi-shard transaction abandoned")
            elif s.sticky and keep is not None and s.usable and s.txn_status == b"I":
                keep(sh, s)
                continue
            pool.release(s)
        self.servers = {}


async def _ready(server):
    return server


def first_error(shards: list[str], replies) -> bytes | None:
    """The first shard's ErrorResponse, its message prefixed with the shard's name."""
    for name, frames in zip(shards, replies, strict=True):
        for t, raw in frames:
            if t == 0x45:
                return shard_error(name, raw)
    return None


_HEAD = frozenset(b"12tnT")


def merge_counts(replies) -> bytes:
    """One write run on several shards (an INSERT split, an UPDATE/DELETE everywhere): rows
    RETURNING concatenated, the counts of the command tags added up."""
    rows = [raw for frames in replies for t, raw in frames if t == 0x44]
    total = 0
    head = "INSERT 0"
    for frames in replies:
        for t, raw in frames:
            if t == 0x43:
                tag = m.decode_query(raw[5:])
                head, _, n = tag.rpartition(" ")
                total += int(n) if n.isdigit() else 0
    out = [raw for t, raw in replies[0] if t in _HEAD]   # Parse/Bind/Describe replies
    out.extend(rows)
    out.append(m.command_complete(f"{head} {total}"))
    return b"".join(out)


def split_insert(sql: str, groups: dict[str, list[int]]) -> dict[str, str]:
    """The INSERT … VALUES text for each shard, holding only that shard's rows."""
    from pglast import parse_sql
    from pglast.stream import RawStream

    out = {}
    for shard, idxs in groups.items():
        stmt = parse_sql(sql)[0].stmt
        rows = stmt.selectStmt.valuesLists
        stmt.selectStmt.valuesLists = tuple(rows[i] for i in idxs)
        out[shard] = RawStream()(stmt)
    return out


def agree(shards: list[str], replies) -> bytes:
    """The client's reply to a unit run everywhere (DDL): the first shard's, minus its Z."""
    return b"".join(raw for t, raw in replies[0] if t != 0x5A)


def explain_rows(shards: list[str], replies, text: bool) -> bytes:
    """Every shard's EXPLAIN output as one result: its RowDescription once, then each
    shard's rows in shard order (text format: after a row naming the shard, indented),
    and one CommandComplete; replies are [(type, frame)] up to ReadyForQuery."""
    out: list[bytes] = []
    desc = next((raw for t, raw in replies[0] if t == 0x54), None)
    if desc is not None:
        out.append(desc)
    for name, frames in zip(shards, replies, strict=True):
        rows = [raw for t, raw in frames if t == 0x44]
        if text:
            out.append(m.data_row([f"Shard {name}".encode()]))
            for raw in rows:
                value = decode_row(raw[5:])[0]
                out.append(m.data_row([b"  " + (value or b"")]))
        else:
            out.extend(rows)
    # Anything else a shard said (notices, the tag) as the first shard said it.
    tag = next((raw for t, raw in replies[0] if t == 0x43), m.command_complete("EXPLAIN"))
    out.append(tag)
    return b"".join(out)
