"""A fan-out read streamed to the client: the shards' replies walked in step, their rows
merged as they arrive and written at the pace the client reads.

Strategy: every shard got the same messages, so every reply has the same shape; the
walk takes one frame from each shard at a time (all RowDescriptions must agree) and
answers for them once. At the rows it switches by the merge: concatenation forwards
whatever any shard has (runs of DataRows as they came, when nothing needs looking at);
ORDER BY is a k-way merge holding one row per shard; GROUP BY and aggregates fold rows
into groups as they come and send the groups at the end. Output goes out in ~64 KiB
writes; while the client's socket is above its high-water mark the walk waits, the
shards' streams fill to their budget and pause their servers (shardstream). A LIMIT that
is satisfied stops the rows (later ones are dropped on arrival); an error from a shard
is sent alone, named after its shard. Either way every server is read to its
ReadyForQuery before it is given back, so none returns to the pool mid-reply. A
statement for one server of a multi-shard transaction is relayed the same way, unmerged.
"""

from __future__ import annotations

import heapq

from pgshard.protocol import errors
from pgshard.protocol import messages as m
from pgshard.protocol.errors import FeatureNotSupported, InternalError, ProtocolViolation
from pgshard.proxy.shardstream import (
    ASYNC_TYPES,
    D_ROW,
    ERROR,
    READY,
    ROW_DESC,
    ShardStream,
    Wakeup,
)
from pgshard.sql.fanout_plan import MergeSpec
from pgshard.sql.merge import Merger, row_description

FLUSH_BYTES = 64 * 1024          # output is written to the client in pieces of about this
MIN_SHARD_BUDGET = 64 * 1024     # a shard's stream holds at least this much before pausing
_COMPLETE, _SUSPENDED, _NO_DATA = 0x43, 0x73, 0x6E
_COPY_OUT, _COPY_DATA, _COPY_DONE = 0x48, 0x64, 0x63


ENDED = object()   # _peek: the shard's reply is over


class ShardFailed(Exception):
    """A shard answered with an ErrorResponse (frame) where the walk stood."""

    def __init__(self, index: int, frame: bytes):
        super().__init__(index)
        self.index = index
        self.frame = frame


class ClientGone(Exception):
    """The client disconnected: nothing more is worth sending."""


def shard_error(name: str, frame: bytes) -> bytes:
    """A shard's ErrorResponse frame with its message prefixed by the shard's name."""
    return m.error_from(errors.from_fields(m.decode_fields(frame[5:]), f"{name}: "))


class _Output:
    """Bytes for the client, written in pieces, waiting while its socket is full."""

    def __init__(self, session):
        self.session = session
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)

    async def row(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size >= FLUSH_BYTES:
            await self.flush()

    def write_now(self) -> None:
        if self.parts:
            data = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
            self.parts = []
            self.size = 0
            self.session.write(data)

    async def flush(self) -> None:
        self.write_now()
        await self.session.fan.fan_writable()
        if self.session.closed:
            raise ClientGone()


async def stream_read(session, shards: list[str], servers, emit, spec: MergeSpec | None,
                      hide_desc: int | None, budget: int, relay: bool = False,
                      copy_header: bool = False) -> bool:
    """Run a read on servers [(pool, server)] (one per shard, in order) and stream the
    merged reply (no ReadyForQuery) to the session. emit(server, i) queues the messages
    for shards[i]. hide_desc: the ordinal (0-based, among RowDescription/NoData replies)
    of a description the client did not ask for. relay: one server whose reply goes to
    the client as it is (any statement, nothing to merge). True when the result went
    out, False when an error was sent instead (or the client left). copy_header: a
    COPY … TO STDOUT whose first CopyData of each shard is a header line (sent once)."""
    wake = Wakeup()
    per_shard = max(MIN_SHARD_BUDGET, budget // max(1, len(servers)))
    streams = []
    for i, (pool, s) in enumerate(servers):
        st = ShardStream(pool, s, per_shard, wake)
        streams.append(st)
        s.link(st)
        session.settings.sync(s)
        emit(s, i)
        s.flush()
    walk = _Walk(session, shards, streams, spec or MergeSpec(), hide_desc, wake, relay)
    walk.copy_header = copy_header
    try:
        return await walk.run()
    finally:
        for st in streams:
            st.close()


class _Walk:
    """One fan-out read in progress: the shards' row streams merged (or one relayed) into
    the client's single answer as rows arrive."""

    copy_header = False

    def __init__(self, session, shards, streams: list[ShardStream], spec: MergeSpec,
                 hide_desc: int | None, wake: Wakeup, relay: bool = False):
        if relay and len(streams) != 1:
            raise ValueError("relay is for one server")
        self.relay = relay
        self.shards = shards
        self.streams = streams
        self.spec = spec
        self.hide_desc = hide_desc
        self.wake = wake
        self.out = _Output(session)

    async def run(self) -> bool:
        try:
            await (self._relay() if self.relay else self._walk())
        except ShardFailed as f:
            self.out.add(shard_error(self.shards[f.index], f.frame))
            self.out.write_now()
            await self._drain()
            return False
        except ClientGone:
            await self._drain()
            return False
        except FeatureNotSupported:
            # The merge refused what the shards sent: the servers still finish cleanly.
            self.out.write_now()
            await self._drain()
            raise
        except ProtocolViolation as exc:
            # Replies the merge cannot read: an error for this statement, not the session.
            self.out.write_now()
            await self._drain()
            raise InternalError(f"the shards' replies could not be merged: {exc.message}") from None
        self.out.write_now()
        return True

    async def _drain(self) -> None:
        """Read every server to its ReadyForQuery, keeping nothing."""
        for st in self.streams:
            st.drop_all()
        while not all(st.idle for st in self.streams):
            await self.wake.wait()

    # -- the walk over the replies' frames --------------------------------------------------

    async def _walk(self) -> None:
        streams = self.streams
        cols = None          # columns of the latest RowDescription
        rows_due = False     # a RowDescription not yet followed by its rows
        tag_count = None     # rows sent, once the row phase ended: the tag is due
        descs = 0
        while True:
            heads = [await self._head(i) for i in range(len(streams))]
            live = [i for i, h in enumerate(heads) if h is not None]
            if not live:
                return
            t = heads[live[0]]
            if t == ROW_DESC:
                frames = [streams[i].pop() for i in live]
                decoded = [m.decode_row_description(f[5:]) if f[0] == ROW_DESC else None
                           for f in frames]
                bad = next((self.shards[i] for i, c in zip(live, decoded, strict=True)
                            if c != decoded[0]), None)
                if bad is not None:
                    raise FeatureNotSupported(
                        f"shards return different columns for this query "
                        f"({self.shards[live[0]]} vs {bad})",
                        hint="the shards' schemas differ; run the DDL through pgshard so "
                             "every shard has it")
                cols = decoded[0]
                rows_due = True
                if descs != self.hide_desc:
                    self.out.add(row_description(frames[0][5:], self.spec.hidden))
                descs += 1
                continue
            if t == _COPY_OUT:
                await self._copy_out(live)
                continue
            if t == D_ROW or (rows_due and t in (_COMPLETE, _SUSPENDED)):
                if cols is None:
                    raise FeatureNotSupported("cannot merge rows whose columns were never "
                                              "described (a pipeline pgshard cannot follow)")
                tag_count = await self._rows(Merger(self.spec, cols))
                rows_due = False
                continue
            frames = [streams[i].pop() for i in live]
            if t == _COMPLETE and tag_count is not None:
                self.out.add(m.command_complete(f"SELECT {tag_count}"))
                tag_count = None
            elif t == _SUSPENDED:
                self.out.add(frames[0])
                tag_count = None
            elif t == _NO_DATA:
                if descs != self.hide_desc:
                    self.out.add(frames[0])
                descs += 1
            elif t != READY:   # the caller answers the client's Sync itself
                self.out.add(frames[0])

    async def _relay(self) -> None:
        """One server's reply as it comes, ReadyForQuery left to the caller."""
        st = self.streams[0]
        while True:
            t = await self._head(0)
            if t is None:
                return
            if t == D_ROW:
                run, _ = st.pop_rows(None)
                await self.out.row(run)
                continue
            frame = st.pop()
            if t != READY:
                self.out.add(frame)

    def _peek(self, i: int):
        """The type of shard i's next frame if one is buffered now, None if not yet, ENDED
        once its reply ended. Notices and the like are sent on for the first shard only
        (the others say the same); an ErrorResponse raises ShardFailed."""
        st = self.streams[i]
        while True:
            t = st.peek()
            if t is None:
                if st.idle:
                    if st.lost is not None:
                        raise st.lost
                    return ENDED
                return None
            if t in ASYNC_TYPES:
                frame = st.pop()
                if i == 0:
                    self.out.add(frame)
                continue
            if t == ERROR:
                raise ShardFailed(i, st.pop())
            return t

    async def _head(self, i: int) -> int | None:
        """The type of shard i's next frame (waiting for it), None once its reply ended."""
        while True:
            t = self._peek(i)
            if t is ENDED:
                return None
            if t is not None:
                return t
            await self._wait()

    async def _wait(self) -> None:
        """Nothing to read now: send what is ready (waiting while the client is slow),
        then wait for a shard."""
        if self.out.parts:
            await self.out.flush()
            return   # more may have arrived meanwhile: the caller looks again
        await self.wake.wait()

    # -- COPY … TO STDOUT ----------------------------------------------------------------

    async def _copy_out(self, live: list[int]) -> None:
        """Every shard's COPY data, concatenated as it arrives: one CopyOutResponse, the
        header line once, one CopyDone and a tag with the rows of all shards."""
        streams = self.streams
        frames = [streams[i].pop() for i in live]
        bad = next((self.shards[i] for i, f in zip(live, frames, strict=True)
                    if f != frames[0]), None)
        if bad is not None:
            raise FeatureNotSupported(
                f"shards answer this COPY with different columns ({self.shards[live[0]]} vs "
                f"{bad})", hint="the shards' schemas differ; run the DDL through pgshard")
        self.out.add(frames[0])
        active = set(live)
        first = {i: True for i in live}
        while active:
            moved = False
            for i in sorted(active):
                t = self._peek(i)
                if t is None:
                    continue
                moved = True
                if t is ENDED or t != _COPY_DATA:
                    active.discard(i)   # at its CopyDone (or cut short: the walk sees it)
                    continue
                st = streams[i]
                if first[i]:
                    first[i] = False
                    if self.copy_header and i != live[0]:
                        st.pop()   # the same header line again
                        continue
                run, _ = st.pop_rows(None, _COPY_DATA)
                await self.out.row(run)
            if not moved and active:
                await self._wait()
        total, done = 0, None
        for i in live:
            t = await self._head(i)
            if t == _COPY_DONE:
                done = streams[i].pop()
                t = await self._head(i)
            if t == _COMPLETE:
                tag = m.decode_query(streams[i].pop()[5:])   # a C string, as a Query is
                total += int(tag.rsplit(" ", 1)[-1]) if tag[-1:].isdigit() else 0
        if done is not None:
            self.out.add(done)
        self.out.add(m.command_complete(f"COPY {total}"))

    # -- the rows ---------------------------------------------------------------------------

    async def _rows(self, merger: Merger) -> int:
        """Send the merged rows of every shard; how many were sent."""
        window = merger.window()
        if merger.spec.grouped:
            await self._fold(merger)
            for row in merger.grouped_rows():
                msg = window.take(row)
                if msg is not None:
                    await self.out.row(msg)
                if window.full:
                    break
        elif merger.ordered:
            await self._kway(merger, window)
        else:
            await self._concat(merger, window)
        if window.full:
            for st in self.streams:
                st.drop_rows()   # LIMIT satisfied: the rest only needs reading to its end
        return window.count

    def _ready(self, i: int, active: set[int]) -> bool:
        """Whether shard i has a DataRow ready now (no waiting); drops it from active
        once its rows ended."""
        t = self._peek(i)
        if t is None:
            return False
        if t is ENDED or t != D_ROW:
            active.discard(i)
            return False
        return True

    async def _concat(self, merger: Merger, window) -> None:
        """Rows of every shard as they arrive, in no particular order between shards."""
        active = set(range(len(self.streams)))
        while active:
            moved = False
            for i in sorted(active):
                if not self._ready(i, active):
                    continue
                moved = True
                st = self.streams[i]
                bulk = window.bulk()
                if bulk != 0:
                    run, n = st.pop_rows(bulk)
                    window.took(n)
                    await self.out.row(run)
                else:
                    frame = st.pop()
                    row = merger.row(frame[5:]) if window.needs_values else None
                    msg = window.take(row, frame)
                    if msg is not None:
                        await self.out.row(msg)
                if window.full:
                    return
            if not moved and active:
                await self._wait()

    async def _kway(self, merger: Merger, window) -> None:
        """ORDER BY across shards: each shard's rows come sorted, one head row each."""
        heap: list = []
        seq = 0

        async def pull(i: int) -> None:
            nonlocal seq
            t = await self._head(i)
            if t == D_ROW:
                frame = self.streams[i].pop()
                row = merger.row(frame[5:])
                heapq.heappush(heap, (merger.sort_key(row), i, seq, row, frame))
                seq += 1

        for i in range(len(self.streams)):
            await pull(i)
        while heap:
            _, i, _, row, frame = heapq.heappop(heap)
            msg = window.take(row, frame)
            if msg is not None:
                await self.out.row(msg)
            if window.full:
                return
            await pull(i)

    async def _fold(self, merger: Merger) -> None:
        """Every row into its group, as rows arrive (memory per group, not per row)."""
        active = set(range(len(self.streams)))
        while active:
            moved = False
            for i in sorted(active):
                st = self.streams[i]
                while self._ready(i, active):
                    moved = True
                    merger.accumulate(merger.row(st.pop()[5:]))
            if not moved and active:
                await self._wait()
