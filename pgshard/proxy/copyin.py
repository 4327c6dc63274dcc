"""COPY … FROM STDIN streamed to several shards: the statement started on each shard's
server of a transaction (scatter.MultiTxn), the client's CopyData split into rows by key
(pgshard.protocol.copyrows) and sent to each row's owner, COPY n summed at the end.

    copy = CopyFanout(multi, sql, splitter, owner=lambda key: catalog.shard_for_key(key).name)
    await copy.start()                 # every shard answered CopyInResponse, or PgError
    client.write(copy.in_response)     # the client's CopyInResponse
    for payload in client CopyData:    # the client's CopyData bodies, in order
        await copy.data(payload)       # PgError: a row or a shard failed; then copy.fail()
    count = await copy.done()          # at the client's CopyDone: the rows stored

The transaction then commits like any other on several shards (two-phase commit).

Strategy: rows go out in CopyData messages of up to `batch_bytes` per shard (a CopyData
need not hold whole rows; each shard still gets whole rows, in order). A shard whose socket
is past its transport's write high-water mark is waited for (ServerConnection.drain)
before more is read, so a fast client cannot make the proxy buffer a slow shard's share.
A shard that fails mid-stream answers ErrorResponse and ReadyForQuery at once and drops
what follows; data() reports it at the next call, named after the shard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pgshard.protocol import messages as m
from pgshard.protocol.copyrows import CopyRow, CopySplitter
from pgshard.protocol.errors import (
    ConnectionFailure,
    InternalError,
    InvalidTextRepresentation,
    PgError,
)
from pgshard.protocol.framing import BACKEND_TYPES, FrameBuffer
from pgshard.proxy.backend import X_QUERY
from pgshard.proxy.scatter import Collector

COPY_DONE = m.frame(b"c")
BATCH_BYTES = 64 * 1024


def copy_data(payload: bytes) -> bytes:
    return m.frame(b"d", payload)


class _CopyCollector(Collector):
    """A shard server's replies during COPY: `started` resolves at its CopyInResponse (or
    an error), `done` at its ReadyForQuery."""

    def __init__(self, pool):
        super().__init__(pool)
        self.started = asyncio.get_running_loop().create_future()
        self._frames = FrameBuffer(allowed=BACKEND_TYPES)

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.started.done():
            return
        self._frames.feed(data)
        while (msg := self._frames.next_frame()) is not None:
            if msg[0] in (0x47, 0x45) and not self.started.done():   # 'G', 'E'
                self.started.set_result(msg[0] == 0x47)

    def server_idle(self, server) -> None:
        super().server_idle(server)
        if not self.started.done():
            self.started.set_result(False)

    def server_lost(self, server, reason: str) -> None:
        super().server_lost(server, reason)
        if not self.started.done():
            self.started.set_result(False)

    def error(self, shard: str) -> PgError | None:
        """The shard's ErrorResponse, named after it; a lost server is 08006."""
        if self.done.done() and self.done.exception() is not None:
            exc = self.done.exception()
            return exc if isinstance(exc, PgError) else ConnectionFailure(str(exc))
        for t, raw in self.frames():
            if t == 0x45:
                err = m.error_to_exception(raw[5:])
                err.message = f"{shard}: {err.message}"
                return err
        return None


class CopyFanout:
    """One COPY FROM STDIN split over the shards a MultiTxn holds (see the module text)."""

    def __init__(self, multi, sql: str, splitter: CopySplitter,
                 owner: Callable[[bytes], str], *, shards: list[str] | None = None,
                 batch_bytes: int = BATCH_BYTES):
        self.multi = multi
        self.sql = sql
        self.splitter = splitter
        self.owner = owner
        self.shards = list(shards if shards is not None else multi.shards)
        self.batch_bytes = batch_bytes
        self.collectors: dict[str, _CopyCollector] = {}
        self._pending: dict[str, list[bytes]] = {sh: [] for sh in self.shards}
        self._pending_size: dict[str, int] = dict.fromkeys(self.shards, 0)
        self._prologue_sent = False
        self.rows_sent = 0

    async def start(self) -> None:
        """Send the COPY statement to every shard; PgError (the first shard's, named) if
        any did not enter COPY mode (those that did are sent CopyFail)."""
        lost = [sh for sh in self.shards if not self._server(sh).usable]
        if lost:
            raise ConnectionFailure(f"{lost[0]}: lost the server connection")
        for sh in self.shards:
            pool, s = self.multi.servers[sh]
            c = self.collectors[sh] = _CopyCollector(pool)
            s.link(c)
            s.send(m.query(self.sql))
            s.push(X_QUERY)
            s.flush()
        started = await asyncio.gather(*(c.started for c in self.collectors.values()))
        if not all(started):
            bad = next(sh for sh, ok in zip(self.shards, started, strict=True) if not ok)
            err = self.collectors[bad].error(bad) or PgError(
                f"{bad}: COPY did not start", sqlstate="08P01")
            await self.fail("COPY failed on another shard")
            raise err

    @property
    def in_response(self) -> bytes:
        """The CopyInResponse frame to send the client (every shard's is the same: the
        format and the column count come from the statement and the table)."""
        first = self.collectors[self.shards[0]]
        return next(raw for t, raw in first.frames() if t == 0x47)

    async def data(self, payload: bytes) -> None:
        """One client CopyData: its whole rows sent on to their owners."""
        self._check()
        rows = self.splitter.feed(payload)
        await self._route(rows)

    async def done(self) -> int:
        """The client's CopyDone: the last rows, each shard's epilogue and CopyDone; the
        number of rows the shards stored (their COPY n added up)."""
        self._check()
        await self._route(self.splitter.finish(), final=True)
        for sh in self.shards:
            s = self._server(sh)
            if self.splitter.epilogue:
                s.send(copy_data(self.splitter.epilogue))
            s.send(COPY_DONE)
            s.flush()
        await asyncio.gather(*(c.done for c in self.collectors.values()),
                             return_exceptions=True)
        total = 0
        for sh, c in self.collectors.items():
            err = c.error(sh)
            if err is not None:
                raise err
            for t, raw in c.frames():
                if t == 0x43:
                    tag = m.decode_query(raw[5:])
                    if tag.startswith("COPY "):
                        total += int(tag[5:])
        return total

    async def fail(self, reason: str) -> None:
        """CopyFail to every shard still copying; waits until each is back at ReadyForQuery."""
        body = reason.encode("utf-8", "replace").replace(b"\0", b"") + b"\0"
        for sh, c in self.collectors.items():
            if not c.done.done():
                s = self._server(sh)
                s.send(m.frame(b"f", body))
                s.flush()
        await asyncio.gather(*(c.done for c in self.collectors.values()),
                             return_exceptions=True)

    # ------------------------------------------------------------------ sending

    def _server(self, shard: str):
        return self.multi.servers[shard][1]

    def _check(self) -> None:
        for sh, c in self.collectors.items():
            if c.done.done():           # a shard left COPY mode early: it failed
                raise c.error(sh) or PgError(f"{sh}: COPY ended early", sqlstate="08P01")

    async def _route(self, rows: list[CopyRow], final: bool = False) -> None:
        if not self._prologue_sent and self.splitter.prologue_ready:
            self._prologue_sent = True
            if self.splitter.prologue:
                for sh in self.shards:
                    self._queue(sh, self.splitter.prologue)
        for row in rows:
            if row.key is None:
                raise InvalidTextRepresentation(
                    f"COPY row {row.number}: a NULL shard key belongs to no shard")
            sh = self.owner(row.key)
            if sh not in self._pending:
                raise InternalError(f"COPY row {row.number} belongs to shard {sh}, which this "
                                    "COPY does not reach")
            self._queue(sh, row.data)
            self.rows_sent += 1
        for sh in self.shards:
            if self._pending[sh]:
                self._send(sh)
        if not final:
            await self._wait_writable()

    def _queue(self, shard: str, data: bytes) -> None:
        self._pending[shard].append(data)
        self._pending_size[shard] += len(data)
        if self._pending_size[shard] >= self.batch_bytes:
            self._send(shard)

    def _send(self, shard: str) -> None:
        s = self._server(shard)
        s.send(copy_data(b"".join(self._pending[shard])))
        s.flush()
        self._pending[shard] = []
        self._pending_size[shard] = 0

    async def _wait_writable(self) -> None:
        """Wait while any shard's socket is past its write high-water mark."""
        await asyncio.gather(*(self._server(sh).drain() for sh in self.shards))
