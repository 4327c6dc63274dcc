"""Units that run on several shards: fan-out reads merged, DDL everywhere, INSERTs split
per shard, and the transaction held on every shard once DDL runs inside BEGIN."""

from __future__ import annotations

import asyncio
import time

from pgshard.protocol import errors
from pgshard.protocol import messages as m
from pgshard.protocol.errors import (
    ActiveSqlTransaction,
    FeatureNotSupported,
    InternalError,
    PgError,
)
from pgshard.proxy import fanread, read_filter, scatter
from pgshard.proxy.backend import (
    X_BIND,
    X_DESC_PORTAL,
    X_DESC_STMT,
    X_EXEC,
    X_FAKE,
    X_PARSE,
    X_QUERY,
    X_SYNC,
)
from pgshard.proxy.refusals import aborted
from pgshard.proxy.units import (
    OP_BIND,
    OP_DESC_STMT,
    OP_FAKE,
    OP_PARSE,
    OP_RAW,
    OP_SYNC,
    TXN_KINDS,
    Fanout,
    Wait,
    quote_literal,
)
from pgshard.sql import classify as r


class FanoutRunner:
    """The units of one ClientSession that run on several shards (held as `session.fan`):
    fan-out reads streamed and merged, DDL everywhere, INSERTs split per shard, the
    multi-shard transaction (opened, run on, ended with two-phase commit), and the client
    socket's flow for streamed reads. The session's state is reached through `session`."""

    __slots__ = ("session", "proxy", "fan_paused", "fan_resumed")

    def __init__(self, session):
        self.session = session
        self.proxy = session.proxy
        self.fan_paused = False     # the client's socket is above its high-water mark
        self.fan_resumed: asyncio.Future | None = None

    async def after_wait(self, wait, t: int, raw: bytes) -> None:
        """Await a routing decision's wait (units.Wait), then dispatch the message again."""
        session = self.session
        await wait.run(session)
        aw = session._dispatch(t, raw)
        if aw is not None:
            await aw

    async def learn_columns(self, tables) -> None:
        """Learn where each table's key column sits in its column order, from a shard."""
        session = self.session
        cat = self.proxy.catalog
        for table in tables:
            key = cat.key_column(table)
            sql = ("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass("
                   f"{quote_literal(table)}) AND attnum > 0 AND NOT attisdropped ORDER BY attnum")
            msg = m.query(sql)

            def emit(s, i, msg=msg):
                s.send(msg)
                s.push(X_QUERY)
                s.forget_unnamed()

            if session.txn.multi is not None:   # the table may exist only in this transaction
                replies = await session.txn.multi.run(session.txn.multi.shards[:1], emit)
            elif self.own_idle_server() is not None:
                # On a server this client keeps (its session state pins it): taking another
                # from its pool could wait for that very one (a pool of one).
                replies = [await self.on_own_server(emit)]
            else:
                replies = await scatter.run_on_shards(session, [session.targeting.any_shard()], emit)
            names = [scatter.decode_row(raw[5:])[0] for t, raw in replies[0] if t == 0x44]
            names = [n.decode() for n in names if n is not None]
            self.proxy.set_key_position(table, names.index(key) if key in names else -1,
                                        database=session.database)

    def own_idle_server(self):
        """A pinned server of this client that is usable and idle (no unit open on it)."""
        session = self.session
        s = session.server
        if s is not None:
            ok = s.sticky and s.usable and not s.expect and not s.unsynced
            return s if ok else None
        return next((p for p in session.att.parked.values() if p.usable), None)

    async def on_own_server(self, emit) -> list[tuple[int, bytes]]:
        """Run emit's unit on own_idle_server(); its reply frames. It stays the client's."""
        session = self.session
        s = self.own_idle_server()
        c = scatter.Collector(s.pool)
        s.link(c)
        try:
            session.settings.sync(s)
            emit(s, 0)
            s.flush()
            await c.done
        finally:
            if s.usable:
                s.link(session)
        return c.frames()

    async def multi_query(self, raw: bytes, sql: str, plan: r.Plan) -> None:
        session = self.session
        kind = plan.kind
        if kind in (r.COMMIT, r.ROLLBACK):
            out = await self.multi_end(kind)
            session.write(out + m.ready_for_query(b"I"))
            return
        if kind == r.BEGIN:
            session.write(m.warning_from(ActiveSqlTransaction(
                "there is already a transaction in progress"))
                       + m.command_complete("BEGIN") + m.ready_for_query(session._status()))
            return
        if kind in (r.SET, r.RESET, r.SET_LOCAL, r.TXN_INNER, r.DISCARD_ALL) or plan.config:
            if session.txn.multi.failed and kind != r.TXN_INNER:
                raise aborted()
            if (kind == r.SET or plan.config) and plan.value is not None:
                session.settings.set(plan.name, plan.value)
            elif kind in (r.RESET, r.SET):
                session.settings.reset(plan.name, None)
            elif kind == r.TXN_INNER and plan.first_word in ("SAVEPOINT", "RELEASE"):
                session.txn.savepoint(sql, plan.first_word)
            fan = Fanout("all", list(session.txn.multi.shards), None)
        else:
            fan = self.multi_target(plan, sql)
            while isinstance(fan, Wait):
                await fan.run(session)
                fan = self.multi_target(plan, sql)
            if plan.sticky:
                # State of the session (pg_dump's SQL PREPAREs, a temp table) made on one
                # shard of the transaction (statements that touch no rows go to its first
                # shard): that server then stays the client's (parked when the transaction
                # ends, see MultiTxn.release). On several shards it is refused: their
                # servers would each hold a part of it.
                if fan.kind != "one":
                    raise FeatureNotSupported(
                        f"{plan.sticky} leaves session state on its server, and this "
                        "statement runs on several shards", hint="pin it to one shard with "
                        "/* shard: <name> */ or a /* shard_key: … */ hint")
                await session.txn.multi.ensure(fan.shards)
                session.att.pin(session.txn.multi.servers[fan.shards[0]][1], plan, sql)
            elif plan.first_word == "EXECUTE" and session.sql_prepared and fan.kind == "one":
                await session.txn.multi.ensure(fan.shards)   # its PREPARE there first
                session.att.replay_sql_prepare(session.txn.multi.servers[fan.shards[0]][1], sql)
        await self.fanout(fan, [(raw, X_QUERY)], sql, True)


    def release_if_idle(self) -> None:
        """Let go of a server held only because a Describe was flushed without a Sync."""
        session = self.session
        s = session.server
        if s is not None and s.txn_status == b"I" and not s.expect and s.unsynced != 2 \
                and session.pool_mode == "transaction" and session.txn.multi is None:
            session.att.detach()

    async def check_fanout(self, fan: Fanout) -> None:
        session = self.session
        # A server still answering the client's previous request (pipelined) is let go
        # once it has answered, unless a transaction keeps it.
        while session.server is not None and session.server.expect:
            await session.att.wait_idle_point()
        self.release_if_idle()
        if session.server is not None and not await session.simple.join_multi() \
                and session.server is not None:
            session.att.detach()   # idle (session pooling): the statement runs elsewhere
        if fan.kind in ("insert", "write") and session.txn.multi is None:
            if self.proxy.twophase is None:
                if fan.kind == "write" or session.txn.pending is not None:
                    raise r.CrossShardTransaction(
                        f"this statement writes on {len(fan.shards)} shards and two-phase "
                        "commit is off (two_phase_commit = false)",
                        hint="write the rows of each shard in its own statement")
            else:
                # The write is one transaction on every shard it reaches: an explicit one
                # (its BEGIN was held back until now) or its own, committed when it ends.
                implicit = session.txn.pending is None
                session.txn.multi = scatter.MultiTxn(session, [], session.txn.pending or "BEGIN")
                session.txn.multi.implicit = implicit
                session.txn.opened()

    async def run_fanout(self, fan: Fanout, parts: list[tuple[bytes, int, bool]],
                          hide_desc: int | None = None) -> bytes | None:
        """Run parts on every shard of fan; the merged reply (no Z), or None after an error
        has been written to the client. A read streams its rows to the client as it goes
        (then b"" is returned); hide_desc: see fanread.stream_read."""
        session = self.session
        def emit(s, i):
            for msg, kind, swallow in (parts[fan.shards[i]] if isinstance(parts, dict) else parts):
                s.send(msg)
                s.push(kind, swallow)
            s.forget_unnamed()

        if session.txn.multi is None and session.txn.pending is not None and fan.kind in ("ddl", "lock"):
            await self.open_multi()
        t0 = time.monotonic()
        if fan.kind == "explain":
            return await self.explain(fan, emit)
        if fan.kind in ("read", "copy_out") or (fan.kind == "one" and session.txn.multi is not None):
            try:
                ok = await self.stream_read(fan, emit, hide_desc)
            finally:
                self.fan_metrics(fan, t0)
            if not ok and session.txn.multi is not None:
                session.txn.multi.failed = True
            return b"" if ok else None
        if session.txn.multi is not None:
            replies = await session.txn.multi.run(fan.shards, emit)
        else:
            replies = await scatter.run_on_shards(session, fan.shards, emit)
        self.fan_metrics(fan, t0)
        err = scatter.first_error(fan.shards, replies)
        if err is not None and session.txn.multi is not None:
            session.txn.multi.failed = True
        if err is not None:
            if fan.kind != "read" and session.txn.multi is None:
                ok = [n for n, fr in zip(fan.shards, replies, strict=True) if not any(t == 0x45 for t, _ in fr)]
                if ok:
                    err = m.error_from(errors.from_fields(
                        m.decode_fields(err[5:]),
                        detail=f"the statement succeeded on {', '.join(ok)}; fix the failing "
                               "shard and re-run it there, or undo it on the others"))
            session.write(err)
            return None
        if fan.kind in ("insert", "write"):
            return scatter.merge_counts(replies)
        if fan.kind in ("one", "all", "lock"):
            return scatter.agree(fan.shards, replies)
        self.proxy.forget_key_positions()
        self.proxy.statements.invalidate()
        return scatter.agree(fan.shards, replies)

    async def stream_read(self, fan: Fanout, emit, hide_desc: int | None) -> bool:
        session = self.session
        budget = self.proxy.config.proxy.fanout_buffer_bytes
        spec = fan.analysis.merge if fan.kind == "read" and fan.analysis is not None else None
        header = fan.kind == "copy_out" and fan.analysis.option == "header"
        if session.txn.multi is not None:
            # In a multi-shard transaction: its held servers; a statement for one of them
            # ("one") is relayed as that server answers it.
            await session.txn.multi.ensure(fan.shards)
            servers = [session.txn.multi.servers[sh] for sh in fan.shards]
            return await fanread.stream_read(session, fan.shards, servers, emit, spec, hide_desc,
                                             budget, relay=fan.kind == "one",
                                             copy_header=header)
        async with scatter.servers_for(session, fan.shards) as servers:
            return await fanread.stream_read(session, fan.shards, servers, emit, spec, hide_desc,
                                             budget, copy_header=header)

    async def explain(self, fan: Fanout, emit) -> bytes | None:
        """EXPLAIN on several shards: each shard's plan, in shard order (text: under a line
        naming the shard)."""
        session = self.session
        if session.txn.multi is not None:
            replies = await session.txn.multi.run(fan.shards, emit)
        else:
            replies = await scatter.run_on_shards(session, fan.shards, emit)
        err = scatter.first_error(fan.shards, replies)
        if err is not None:
            if session.txn.multi is not None:
                session.txn.multi.failed = True
            session.write(err)
            return None
        return scatter.explain_rows(fan.shards, replies, fan.analysis.option == "text")

    def fan_metrics(self, fan: Fanout, t0: float) -> None:
        metrics = self.proxy.metrics
        if metrics is not None:
            elapsed = time.monotonic() - t0
            for sh in fan.shards:
                metrics.query(sh, "primary", f"fanout-{fan.kind}", elapsed)

    # -- the client's socket, for streamed reads (ClientSession.pause/resume_writing) ------

    def fan_flow(self, paused: bool) -> None:
        """The client's transport went above (paused) or back below its high-water mark."""
        self.fan_paused = paused
        f = self.fan_resumed
        if not paused and f is not None and not f.done():
            f.set_result(None)

    async def fan_writable(self) -> None:
        """Return once the client's socket takes more (or the client is gone)."""
        session = self.session
        while self.fan_paused and not session.closed:
            fut = self.fan_resumed = asyncio.get_running_loop().create_future()
            try:
                # A lost connection resumes nothing: look at `closed` now and then.
                await asyncio.wait_for(fut, 1.0)
            except TimeoutError:
                pass
            finally:
                self.fan_resumed = None

    async def multi_unit(self, ops, sync: bool) -> None:
        """A unit with no routed Bind inside a multi-shard transaction: COMMIT/ROLLBACK
        sent with the extended protocol, or a Parse/Describe (run on one held shard)."""
        session = self.session
        session.ext.unit_shard = None
        txn = [op.st for op in ops if op.kind == OP_BIND and op.st.plan.kind in TXN_KINDS]
        if txn:
            end = await self.multi_end(txn[0].plan.kind) if txn[0].plan.kind != r.BEGIN \
                else m.command_complete("BEGIN")
            for op in ops:
                k = op.kind
                if k == OP_PARSE:
                    session.write(m.PARSE_COMPLETE)
                elif k == OP_BIND:
                    session.write(m.BIND_COMPLETE)
                elif k == OP_RAW and op.expect == X_DESC_PORTAL:
                    session.write(m.NO_DATA)
                elif k == OP_RAW and op.expect == X_EXEC:
                    session.write(end)
                elif k == OP_FAKE:
                    session.write(op.reply)
                elif k == OP_SYNC:
                    session.write(m.ready_for_query(session._status()))
            return
        await self.fanout_ext(Fanout("one", [session.txn.multi.shards[0]], None), ops, sync)

    async def open_multi(self) -> None:
        """DDL inside BEGIN: hold the transaction open on every shard from here on."""
        session = self.session
        shards = [sh.name for sh in self.proxy.catalog.shards]
        multi = scatter.MultiTxn(session, shards)
        replies = await multi.open(session.txn.pending)
        err = scatter.first_error(shards, replies)
        if err is not None:
            multi.release(abort=True)
            f = m.decode_fields(err[5:])
            raise PgError(f.get("M", "BEGIN failed"), sqlstate=f.get("C", "XX000"))
        session.txn.pending = None
        session.txn.multi = multi

    def multi_target(self, plan: r.Plan, sql: str, bind=None, st=None) -> Fanout | Wait:
        """Inside a multi-shard transaction every unit runs on the held servers (or a Wait
        comes first, see Targeting.target)."""
        session = self.session
        if session.txn.multi.failed and plan.kind not in (r.COMMIT, r.ROLLBACK):
            raise aborted()
        target = session.targeting.target(plan, bind, st, sql=sql)
        if type(target) is not str:   # a Fanout or a Wait
            return target
        return Fanout("one", [target], None)

    async def multi_end(self, kind: str) -> bytes:
        """COMMIT or ROLLBACK on every shard of the multi-shard transaction: with two-phase
        commit when it holds several shards and wrote (proxy.twophase), else in turn."""
        session = self.session
        multi = session.txn.multi
        session.txn.multi = None
        session.txn.savepoints = []
        word = "ROLLBACK" if kind == r.ROLLBACK or multi.failed else "COMMIT"
        coord = self.proxy.twophase
        if word == "COMMIT" and coord is not None and len(multi.servers) > 1:
            from pgshard.proxy.twophase import make_run
            task = asyncio.ensure_future(
                coord.commit(coord.new_txn_id(), list(multi.servers), make_run(multi)))

            def done(t: asyncio.Task) -> None:
                # The servers go back once the commit is over, even if this client left
                # (or was cancelled) in the middle of it.
                if not t.cancelled():
                    t.exception()
                multi.release(keep=None if session.closed else session.att.keep_parked)
            task.add_done_callback(done)
            try:
                await asyncio.shield(task)
            except PgError as exc:
                return m.error_from(exc)
            return m.command_complete("COMMIT")
        done, failed = [], []
        try:
            for sh in list(multi.servers):   # one by one: stop committing at the first failure
                msg = m.query(word)

                def emit(s, i, msg=msg):
                    s.send(msg)
                    s.push(X_QUERY)
                reply = (await multi.run([sh], emit))[0]
                if any(t == 0x45 for t, _ in reply):
                    failed.append(sh)
                    word = "ROLLBACK"
                else:
                    done.append(sh)
        finally:
            multi.release(abort=bool(failed), keep=session.att.keep_parked)
        if failed:
            return m.error_from(InternalError(
                f"COMMIT failed on {', '.join(failed)}",
                detail=f"committed on: {', '.join(d for d in done) or 'none'} (no two-phase "
                       "commit yet: the shards now disagree)"))
        return m.command_complete(word)

    async def fanout(self, fan: Fanout, parts, sql: str, simple: bool) -> None:
        """A simple Query on several shards."""
        session = self.session
        await self.check_fanout(fan)
        a = fan.analysis
        if fan.kind == "read" and a.shard_sql:
            parts = [(m.query(a.shard_sql), X_QUERY, False)]
        elif fan.kind == "insert":
            texts = scatter.split_insert(sql, fan.groups)
            parts = {sh: [(m.query(t), X_QUERY, False)] for sh, t in texts.items()}
        else:
            parts = [(raw, kind, False) for raw, kind in parts]
        parts = read_filter.per_shard(session, fan, parts)   # exact reads while resharding
        out = await self.run_fanout(fan, parts)
        multi = session.txn.multi
        if multi is not None and getattr(multi, "implicit", False):
            # The statement's own transaction: committed (2PC) or rolled back now.
            end = await self.multi_end(r.COMMIT if out is not None else r.ROLLBACK)
            if out is not None and end[:1] == b"E":
                out = end
        session.write((out or b"") + m.ready_for_query(session._status()))

    async def fanout_ext(self, fan: Fanout, ops, sync: bool) -> None:
        """An extended-protocol unit (Parse/Bind/Describe/Execute) on several shards."""
        session = self.session
        if fan.kind == "insert":
            await session.pipes.insert_ext(fan, ops, sync)
            return
        await self.check_fanout(fan)
        a = fan.analysis
        hidden = a.merge.hidden if fan.kind == "read" and a.merge else 0
        parts: list[tuple[bytes, int, bool]] = []
        parsed = set()
        hide = None
        for at, op in enumerate(ops):
            k = op.kind
            if k == OP_PARSE:
                st = op.st
                parts.append((m.parse("", self.fan_sql(fan, st), st.oids), X_PARSE, False))
                parsed.add(id(st))
            elif k == OP_BIND:
                st, bind = op.st, op.bind
                if id(st) not in parsed:
                    parts.append((m.parse("", self.fan_sql(fan, st), st.oids), X_PARSE, True))
                    parsed.add(id(st))
                rf = bind.result_formats
                if hidden and len(rf) > 1:
                    rf = tuple(rf) + (0,) * hidden
                parts.append((m.bind(bind.portal, "", bind.params, bind.param_formats, rf),
                              X_BIND, False))
                nxt = ops[at + 1] if at + 1 < len(ops) else None
                if fan.kind == "read" and not (nxt is not None and nxt.kind == OP_RAW
                                               and nxt.expect == X_DESC_PORTAL):
                    # The merge needs the column types before the first row, even when the
                    # client did not ask for them (or asks later); this reply is not sent on.
                    hide = sum(1 for p in parts if p[1] in (X_DESC_STMT, X_DESC_PORTAL))
                    parts.append((m.describe(b"P", bind.portal), X_DESC_PORTAL, False))
            elif k == OP_DESC_STMT:
                parts.append((m.describe(b"S", ""), X_DESC_STMT, False))
            elif k == OP_RAW:
                parts.append((op.raw, op.expect, False))
            elif k == OP_FAKE:
                parts.append((b"", X_FAKE, False))
            elif k == OP_SYNC:
                parts.append((m.SYNC, X_SYNC, False))
        if not sync:
            # The servers must reach an idle point to be released; the client's own Sync
            # comes later and is answered here.
            parts.append((m.SYNC, X_SYNC, False))
            session.ext.owe_z = True
        out = await self.run_fanout(
            fan, read_filter.per_shard(session, fan, [p for p in parts if p[1] != X_FAKE]), hide)
        await self.end_ext_unit(out, sync)

    async def end_ext_unit(self, out: bytes | None, sync: bool) -> None:
        """After an extended unit ran on several shards: its own transaction (if it is one)
        committed with 2PC, or rolled back on an error; the reply (out, None after an error
        already sent), then ReadyForQuery at a Sync, or skip to the Sync after an error."""
        session = self.session
        multi = session.txn.multi
        if multi is not None and multi.implicit and (sync or out is None):
            end = await self.multi_end(r.COMMIT if out is not None else r.ROLLBACK)
            if out is not None and end[:1] == b"E":
                out = end
        if out is None:
            if sync:
                session.write(m.ready_for_query(session._status()))
            else:
                session.ext.skip_until_sync = True
            return
        session.write(out + (m.ready_for_query(session._status()) if sync else b""))

    @staticmethod
    def fan_sql(fan: Fanout, st) -> str:
        return fan.analysis.shard_sql if fan.kind == "read" and fan.analysis.shard_sql else st.sql

