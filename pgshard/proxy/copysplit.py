"""COPY … FROM STDIN into a sharded table without a hint: every row to its owner shard.

Strategy: the COPY is one transaction on every serving shard (the client's own, or the
statement's, committed with two-phase commit at the client's CopyDone); the client's
CopyData is cut into rows (protocol.copyrows) and each row streamed to the shard its key
names (proxy.copyin.CopyFanout). On an error the shards' COPYs are failed, the client gets
the error and ReadyForQuery at once, and what it still sends of the COPY is dropped, as
PostgreSQL does.
"""

from __future__ import annotations

from pgshard.protocol import messages as m
from pgshard.protocol.copyrows import CopySplitter
from pgshard.protocol.errors import InsufficientPrivilege, PgError, QueryCanceled
from pgshard.proxy import fence, scatter
from pgshard.proxy.backend import X_QUERY
from pgshard.proxy.copyin import CopyFanout
from pgshard.sql import classify as r
from pgshard.sql.copy_stmt import CopyIn, copy_columns_sql, parse_copy_in
from pgshard.sql.own_objects import OwnObject, may_name_own, own_object


class _DiscardCopy:
    """The rows of a COPY into one of pgshard's own tables, restored from a dump: read
    and dropped (the cluster keeps its own, some differ per shard)."""

    in_response = m.frame(b"G", b"\x00\x00\x00")   # text, no column formats

    async def data(self, payload: bytes) -> None:
        return None

    async def done(self) -> int:
        return 0

    async def fail(self, reason: str) -> None:
        return None


class CopySplit:
    """COPY FROM STDIN of one ClientSession split by key (held as `session.copy`): the
    statement recognised, the copy started on every shard, the client's CopyData fed to
    `sink` and the end (CopyDone, CopyFail, the client gone). The session is reached
    through `session`."""

    __slots__ = ("session", "proxy", "sink")

    def __init__(self, session):
        self.session = session
        self.proxy = session.proxy
        self.sink: CopyFanout | _DiscardCopy | None = None   # the COPY in progress

    def own_object(self, plan: r.Plan, sql: str) -> bool:
        """A statement on one of pgshard's own objects (sql.own_objects): answered here
        (True) — skipped with a NOTICE, or a drop refused — rather than run."""
        session = self.session
        if not (plan.is_ddl or plan.first_word == "COPY") or not may_name_own(sql):
            return False
        own: OwnObject | None = own_object(sql)
        if own is None:
            return False
        if own.drop:
            raise InsufficientPrivilege(
                f"{own.what} belongs to pgshard (its hash function, id spaces and triggers on "
                "every shard) and cannot be dropped through the proxy",
                hint="remove pgshard from a server on that server directly, not through the "
                     "proxy")
        note = m.error_response("00000", f"pgshard: skipped {own.tag} of {own.what}: "
                                "pgshard keeps its own objects on every shard",
                                severity="NOTICE", notice=True)
        if own.copy_in:
            self.sink = _DiscardCopy()
            session.write(note + _DiscardCopy.in_response)
            return True
        session.write(note + m.command_complete(own.tag) + m.ready_for_query(session._status()))
        return True

    def copy_to_split(self, plan: r.Plan, sql: str) -> CopyIn | None:
        """The COPY FROM STDIN this Query is, when it must be split by key (a sharded table,
        several shards, nothing that names a shard), else None."""
        session = self.session
        cat = self.proxy.catalog
        if plan.hinted or session.session_shard is not None or session.session_key is not None \
                or session.local_key is not None or len(cat.shards) < 2 or plan.multi:
            return None
        try:
            stmt = parse_copy_in(sql)
        except ValueError:
            return None
        return stmt if cat.key_column(stmt.table) is not None else None

    async def copy_split(self, sql: str, stmt: CopyIn) -> None:
        session = self.session
        gate = getattr(self.proxy, "lease_gate", None)
        if gate is not None and gate.closed:
            raise gate.error()   # rows routed by a ring that may be stale (control.lease_gate)
        cat = self.proxy.catalog
        if cat.fences and session.txn.multi is None and (
                session.server is None or session.server.txn_status == b"I"):
            # Resharding fences ranges: its rows may fall in them, so the COPY waits for the
            # flip as a statement would (fence.py), then routes by the new ring. (In an open
            # transaction it goes on: the fence's acknowledgement waits for that one.)
            timeout = getattr(self.proxy.config.proxy, "fence_timeout",
                              fence.DEFAULT_FENCE_TIMEOUT)
            await fence.Hold(self.proxy, [f.hi for f in cat.fences], cat.fences[0].job,
                             timeout).wait()
            cat = self.proxy.catalog
        key = cat.key_column(stmt.table)
        shards = list(cat.serving_shards())
        multi = await self.copy_txn()
        try:
            await multi.ensure(shards)
            columns = await self.copy_columns(multi, shards[0], stmt.table)
            index = stmt.key_index(key, [c for c, _ in columns] if stmt.columns is None
                                   else None)
            oid = dict(columns).get(key, 0)
            splitter = CopySplitter(stmt.splitter_format(key), index, oid)
            copy = CopyFanout(multi, sql, splitter, lambda k: cat.ring.shard_for_key(k),
                              shards=shards)
            await copy.start()
        except PgError:
            await self.copy_abandon()
            raise
        self.sink = copy
        session.write(copy.in_response)

    async def copy_txn(self):
        """The transaction the COPY runs in (see PipelineRunner.multi_for_unit)."""
        session = self.session
        if session.txn.multi is not None:
            return session.txn.multi
        return await session.pipes.multi_for_unit()

    async def copy_columns(self, multi, shard: str, table: str) -> list[tuple[str, int]]:
        msg = m.query(copy_columns_sql(table))

        def emit(s, i):
            s.send(msg)
            s.push(X_QUERY)
            s.forget_unnamed()
        frames = (await multi.run([shard], emit))[0]
        err = scatter.first_error([shard], [frames])
        if err is not None:
            raise m.error_to_exception(err[5:])
        out = []
        for t, raw in frames:
            if t == 0x44:
                name, oid = scatter.decode_row(raw[5:])
                out.append((name.decode(), int(oid)))
        return out

    def copy_message(self, t: int, raw: bytes):
        """A CopyData / CopyDone / CopyFail of the split COPY."""
        session = self.session
        if t == 0x64:
            return session._guard(self.copy_step(self.sink.data(raw[5:])), True)
        if t == 0x63:
            return session._guard(self.copy_done(), True)
        msg = m.decode_cstr(raw[5:]) if len(raw) > 5 else ""
        return session._guard(self.copy_failed(
            QueryCanceled(f"COPY from stdin failed: {msg}")), True)

    async def copy_step(self, aw) -> None:
        try:
            await aw
        except PgError as exc:
            await self.copy_failed(exc)

    async def copy_done(self) -> None:
        session = self.session
        copy = self.sink
        try:
            total = await copy.done()
        except PgError as exc:
            await self.copy_failed(exc)   # shards still copying are failed first
            return
        self.sink = None
        out = m.command_complete(f"COPY {total}")
        multi = session.txn.multi
        if multi is not None and multi.implicit:
            end = await session.fan.multi_end(r.COMMIT)
            if end[:1] == b"E":
                out = end
        session.write(out + m.ready_for_query(session._status()))

    async def copy_failed(self, exc: PgError) -> None:
        """The COPY failed (a row, a shard, the client's CopyFail): the error and
        ReadyForQuery now; the rest of the client's COPY is dropped (see _dispatch)."""
        session = self.session
        copy = self.sink
        self.sink = None
        if copy is not None:
            await copy.fail(exc.message)   # only to shards still in COPY mode
        await self.copy_abandon()
        session.write(m.error_from(exc) + m.ready_for_query(session._status()))

    async def copy_abandon(self) -> None:
        session = self.session
        multi = session.txn.multi
        if multi is None:
            return
        multi.failed = True
        if multi.implicit:
            await session.fan.multi_end(r.ROLLBACK)
