"""A client session's extended-protocol pipeline: its prepared statements and pgshard.*
portals, the operations queued until a Flush or Sync, the shard (or fan-out) the unit is
bound to, and sending a unit to its server or answering it here."""

from __future__ import annotations

import time

from pgshard.protocol import messages as m
from pgshard.protocol.errors import (
    DuplicatePreparedStatement,
    InvalidSqlStatementName,
    MalformedMessage,
    PgError,
)
from pgshard.proxy.backend import (
    X_BIND,
    X_CLOSE,
    X_DESC_PORTAL,
    X_DESC_STMT,
    X_EXEC,
    X_FAKE,
    X_SYNC,
)
from pgshard.proxy.refusals import aborted, pipeline_shared, sticky_fanout
from pgshard.proxy.units import (
    FLUSH_OP,
    OP_BIND,
    OP_DESC_STMT,
    OP_FAKE,
    OP_FLUSH,
    OP_PARSE,
    OP_RAW,
    OP_SYNC,
    SYNC_OP,
    TXN_KINDS,
    BindOp,
    DescribeStatementOp,
    FakeOp,
    Fanout,
    ParseOp,
    RawOp,
    Wait,
)
from pgshard.sql import classify as r

PGSHARD_KINDS = frozenset({r.SET_PGSHARD, r.RESET_PGSHARD, r.SHOW_PGSHARD})


def local_columns(plan: r.Plan) -> bytes:
    """RowDescription (SHOW) or NoData (SET/RESET) of a pgshard.* statement."""
    if plan.kind == r.SHOW_PGSHARD:
        return m.row_description([(f"pgshard.{plan.name}", 25)])
    return m.NO_DATA


def query_kind(plan: r.Plan) -> str:
    """The kind label of /metrics query counters: read, write, ddl or other."""
    if plan.kind != r.STATEMENT:
        return "other"
    return "read" if plan.is_read else "ddl" if plan.is_ddl else "write"


class ExtendedPipeline:
    """The extended protocol of one ClientSession (held as `session.ext`). Parse, Bind,
    Describe, Execute and Close are queued as ops; a Flush or Sync sends the unit to the
    shard its Binds route to (or hands it to the session's fan-out and pipeline code), or
    answers it here when it needs no server (pgshard.* statements, a BEGIN/COMMIT held back,
    Parses of statements already known). Everything else of the session (targeting, the
    attached server, the transaction) is reached through `session`; the session's methods
    used on every unit are bound once here."""

    __slots__ = ("session", "proxy", "txn", "stmts", "local_portals", "ops", "unit_shard",
                 "unit_fanout", "unit_split", "unit_role", "skip_until_sync", "owe_z",
                 "_target", "_attach_now", "_reply", "_guard", "write")

    def __init__(self, session):
        self.session = session
        self.proxy = session.proxy
        self.txn = session.txn
        self.stmts: dict[str, object] = {}           # the client's names -> Statement
        self.local_portals: dict[str, object] = {}   # portals of pgshard.* statements
        self.ops: list = []   # ParseOp, BindOp, ... (units.py)
        self.unit_shard: str | None = None
        self.unit_fanout: Fanout | None = None
        self.unit_split = False        # this unit's Binds go to several shards (pipelines.py)
        self.unit_role = "primary"
        self.skip_until_sync = False   # after an error: the client's messages up to its Sync
        self.owe_z = False             # a unit ran to a Sync of its own: the client's is ours
        self._target = session.targeting.target
        self._attach_now = session.att.attach_now
        self._reply = session._reply
        self._guard = session._guard
        self.write = session.write

    def reset_unit(self) -> None:
        """The unit ends here without running: nothing queued, bound to no shard."""
        self.ops = []
        self.unit_shard = self.unit_fanout = None
        self.unit_split = False
        self.unit_role = "primary"

    # ------------------------------------------------------------ messages

    def parse(self, raw: bytes) -> None:
        if self.unit_fanout is not None:
            raise pipeline_shared()
        pm = m.decode_parse(raw[5:])
        named = pm.name != ""
        if named and pm.name in self.stmts:
            raise DuplicatePreparedStatement(f'prepared statement "{pm.name}" already exists')
        st = self.proxy.statements.get(pm.sql, pm.oids, named)
        session = self.session
        if st.plan.first_word == "LISTEN" and session.pool_mode == "transaction":
            session.simple.check_listen()
        self.check_failed_txn(st.plan)
        if named:
            self.stmts[pm.name] = st
        else:
            self.stmts[""] = st
        if st.plan.kind in PGSHARD_KINDS:   # answered here, never sent to a server
            self.ops.append(FakeOp(m.PARSE_COMPLETE))
            return
        self.ops.append(ParseOp(st, raw, pm.name))

    def check_failed_txn(self, plan: r.Plan) -> None:
        if self.txn.failed and plan.kind not in (r.COMMIT, r.ROLLBACK):
            raise aborted()

    def lookup(self, name: str):
        st = self.stmts.get(name)
        if st is None:
            if name == "":
                raise InvalidSqlStatementName("unnamed prepared statement does not exist")
            raise InvalidSqlStatementName(f'prepared statement "{name}" does not exist')
        return st

    def deallocate(self, name: str | None) -> None:
        """SQL DEALLOCATE [ALL] of protocol-level statements, answered by the proxy."""
        if name is None:
            self.stmts.clear()
        elif self.stmts.pop(name, None) is None:
            raise InvalidSqlStatementName(f'prepared statement "{name}" does not exist')

    def bind(self, raw: bytes):
        name, at = m.bind_statement_name(raw[5:])
        st = self.lookup(name)
        plan = st.plan
        if plan.kind in PGSHARD_KINDS:
            self.local_portals[m.decode_cstr(raw[5:])] = st
            self.ops.append(FakeOp(m.BIND_COMPLETE))
            return
        if self.local_portals:   # this Bind replaces a pgshard.* portal of the same name
            self.local_portals.pop(m.decode_cstr(raw[5:]), None)
        self.check_failed_txn(plan)
        session = self.session
        if plan.kind in TXN_KINDS and self.unit_shard is None:
            session.fan.release_if_idle()
        proxy = self.proxy
        multi = len(proxy.catalog.shards) > 1
        bind = m.decode_bind(raw[5:]) if plan.key_param or multi else None
        if plan.kind in TXN_KINDS and session.server is None \
                and session.pool_mode == "transaction":
            shard = None
        elif self.txn.multi is not None:
            shard = session.fan.multi_target(plan, st.sql, bind, st)
            if isinstance(shard, Wait):
                return self._guard(session.fan.after_wait(shard, 0x42, raw), False)
            if shard.kind == "one" and self.unit_fanout is None:
                shard = shard.shards[0]
                self.split_mode()
        else:
            shard = self._target(plan, bind, st)
            if type(shard) is not str and isinstance(shard, Wait):
                # Routed once the wait is over: the Bind is dispatched again.
                return self._guard(session.fan.after_wait(shard, 0x42, raw), False)
        if self.unit_split and (shard is None or not isinstance(shard, Fanout)):
            if st.global_name:
                raw = m.renamed_bind(raw, at, name, st.global_name)
            self.ops.append(BindOp(st, raw, bind, shard))
            return
        if isinstance(shard, Fanout):
            if plan.sticky:
                raise sticky_fanout(plan)
            if self.unit_shard is not None or self.unit_fanout is not None \
                    or any(op.kind == OP_BIND for op in self.ops):
                raise pipeline_shared()
            self.unit_fanout = shard
            self.ops.append(BindOp(st, raw, bind))
            return
        if self.unit_fanout is not None:
            raise pipeline_shared()
        if shard is not None:
            if self.unit_shard is not None and shard != self.unit_shard:
                # One pipeline, several shards: one transaction on all of them.
                if proxy.twophase is None:
                    raise r.CrossShardTransaction(
                        f"statement routes to shard {shard} but this pipeline already runs "
                        f"on shard {self.unit_shard}, and two-phase commit is off "
                        "(two_phase_commit = false)",
                        hint="send a Sync between statements for different shards")
                self.split_mode()
                if st.global_name:
                    raw = m.renamed_bind(raw, at, name, st.global_name)
                self.ops.append(BindOp(st, raw, bind, shard))
                return
            if self.unit_shard is None:
                self.unit_role = (session.targeting.role_for(shard, plan, st.sql)
                                  if proxy.replicas is not None else "primary")
            elif self.unit_role != "primary":
                self.unit_role = "primary"   # a pipeline of several statements: keep it simple
            if self.unit_role == "primary" and not plan.is_read:
                session.unit_wrote = True
            self.unit_shard = shard
        if st.global_name:
            raw = m.renamed_bind(raw, at, name, st.global_name)
        self.ops.append(BindOp(st, raw))

    def split_mode(self) -> None:
        """From here the unit's Binds are routed one by one (pipelines.py): the ones queued
        so far go to the unit's shard, or are BEGIN/COMMIT/ROLLBACK answered here."""
        if self.unit_split:
            return
        self.unit_split = True
        for op in self.ops:
            if op.kind == OP_BIND:
                op.bind = None
                op.shard = None if op.st.plan.kind in TXN_KINDS else self.unit_shard

    def describe(self, raw: bytes) -> None:
        kind, name = m.decode_target(raw[5:])
        if kind == b"S":
            st = self.lookup(name)
            if st.plan.kind in PGSHARD_KINDS:
                self.ops.append(FakeOp(m.parameter_description(()) + local_columns(st.plan)))
                return
            self.ops.append(DescribeStatementOp(st))
        elif name in self.local_portals:
            self.ops.append(FakeOp(local_columns(self.local_portals[name].plan)))
        else:
            self.ops.append(RawOp(raw, X_DESC_PORTAL))

    def local_execute(self, raw: bytes) -> bool:
        """Execute of a pgshard.* statement's portal: run it here, queue its reply."""
        st = self.local_portals.get(m.decode_cstr(raw[5:]))
        if st is None:
            return False
        plan = st.plan
        if plan.kind == r.SHOW_PGSHARD:
            value = self.session.settings.show_pgshard(plan.name)
            reply = m.data_row([None if value is None else value.encode()]) + \
                m.command_complete("SHOW")
        else:
            reply = m.command_complete(self.session.settings.set_pgshard(plan))
        self.ops.append(FakeOp(reply))
        return True

    def close(self, raw: bytes) -> None:
        kind, name = m.decode_target(raw[5:])
        if kind == b"S":
            # Global statements stay on the servers; only this client's name goes away.
            self.stmts.pop(name, None)
            self.ops.append(FakeOp(m.CLOSE_COMPLETE))
        else:
            self.local_portals.pop(name, None)
            self.ops.append(RawOp(raw, X_CLOSE))

    def bad_unit_end(self, sync: bool):
        """A Sync or Flush with a body: what came before it runs, then an ERROR 08P01 (and
        at a Sync, ReadyForQuery), as PostgreSQL answers."""
        exc = MalformedMessage("invalid message format")
        if self.ops:
            self.ops.append(FLUSH_OP)   # what came before is answered before the error
        aw = self.flush_ops(sync=False) if self.ops else None
        if sync:   # the unit ends here, as at any Sync
            self.unit_shard = self.unit_fanout = None
            self.unit_split = False
            self.unit_role = "primary"
        if aw is not None:
            return self._guard(self._then_fail(aw, exc, sync), False, sync)
        self.session._fail(exc, simple=False, synced=sync)
        return None

    async def _flush_after(self, wait, sync: bool) -> None:
        await wait.run(self.session)
        aw = self.flush_ops(sync)
        if aw is not None:
            await aw

    async def _then_fail(self, aw, exc: PgError, sync: bool) -> None:
        await aw
        self.session._fail(exc, simple=False, synced=sync)

    # ------------------------------------------------------------ a unit sent

    def flush_ops(self, sync: bool):
        """The unit queued so far goes out (a Flush, or a Sync: then it ends); an awaitable
        when that must wait (a server, a fan-out), else None."""
        ops = self.ops
        self.ops = []
        session = self.session
        if self.owe_z:
            # A unit already ran to a Sync of its own on the servers: the client's Sync is
            # answered here, or by the unit it ends.
            srv = session.server
            if all(op.kind in (OP_SYNC, OP_FLUSH) for op in ops) and (
                    srv is None or not (srv.expect or srv.unsynced)):
                if sync:
                    self.owe_z = False
                    self._reply(m.ready_for_query(session._status()))
                return None
            # Otherwise a server has work of this unit since: its Sync answers the client.
            if sync:
                self.owe_z = False
        multi = self.txn.multi
        if self.unit_split or (multi is not None and multi.implicit and sync):
            self.unit_split = False
            self.unit_shard = None
            return self._guard(session.pipes.split_unit(ops, sync), False, sync)
        if multi is not None and self.unit_fanout is None:
            return self._guard(session.fan.multi_unit(ops, sync), False, sync)
        fan = self.unit_fanout
        if fan is not None:
            self.unit_fanout = None
            self.unit_shard = None
            return self._guard(session.fan.fanout_ext(fan, ops, sync), False, sync)
        target = self.unit_shard
        if sync:
            self.unit_shard = None
        if session.server is None and self.local_unit(ops):
            return
        unit = target
        if target is None:
            target = session.targeting.any_shard()
            if session.sql_prepared:   # a look-only SQL EXECUTE: described where it will run
                st = next((op.st for op in ops if op.kind in (OP_PARSE, OP_DESC_STMT)
                           and op.st.plan.first_word == "EXECUTE"), None)
                if st is not None:
                    target = session.targeting.sql_prepared_route(st.plan, st.sql)
                    if type(target) is not str:   # NeedColumns: the unit goes out after
                        self.ops = ops + self.ops
                        return self._guard(self._flush_after(target, sync), False, sync)
        executes = False
        for op in ops:
            k = op.kind
            if k == OP_BIND or (k == OP_RAW and op.expect == X_EXEC):
                executes = True
                break
        if executes and self.txn.failed:
            raise aborted()   # the held-back transaction failed: nothing runs until its end
        if unit is not None:
            role = self.unit_role
        elif session.server is not None:
            role = session.role
        else:
            role = "primary"
        if sync:
            self.unit_role = "primary"
        s = self._attach_now(target, executes, role)
        if s is None:
            if session.server is not None and session.simple.txn_elsewhere(target):
                return self._guard(self._flush_elsewhere(ops, target, executes, role, sync),
                                   False, sync)
            return self._guard(self._flush_slow(ops, target, executes, role), False, sync)
        self.emit_ops(s, ops)
        return None

    async def _flush_slow(self, ops, target: str, executes: bool, role: str = "primary") -> None:
        s = await self.session.att.attach(target, executes, role)
        self.emit_ops(s, ops)

    async def _flush_elsewhere(self, ops, target: str, executes: bool, role: str,
                               sync: bool) -> None:
        """A unit for another shard than the transaction's: the transaction spans both."""
        session = self.session
        await session.simple.answered()
        s = session.server
        if s is not None and s.skipping:
            # An earlier unit of the client's failed there: the server skips to the Sync, and
            # so does this unit, as in PostgreSQL; its Sync, if it has one, goes there.
            if sync:
                self.emit_ops(s, [SYNC_OP])
            else:
                self.skip_until_sync = True
            return
        if not await session.simple.join_multi():
            await self._flush_slow(ops, target, executes, role)
            return
        for op in ops:
            if op.kind == OP_BIND and op.bind is None:
                op.bind = m.decode_bind(op.raw[5:])
        await session.fan.fanout_ext(Fanout("one", [target], None), ops, sync)

    def emit_ops(self, s, ops) -> None:
        """Send ops to server s, with what each reply needs to be matched (s.push)."""
        push, send = s.push, s.send
        session = self.session
        if session.sql_prepared and not s.unsynced:   # SQL EXECUTEs: their PREPAREs first
            for op in ops:
                if op.kind in (OP_BIND, OP_PARSE, OP_DESC_STMT) \
                        and op.st.plan.first_word == "EXECUTE":
                    session.att.replay_sql_prepare(s, op.st.sql)
        last = None   # the plan of the unit's last Bind, for the metrics kind
        last_sql = None
        for op in ops:
            k = op.kind
            if k == OP_PARSE:
                s.parse(op.st, op.raw, op.name)
            elif k == OP_BIND:
                st = op.st
                last = st.plan
                last_sql = st.sql
                s.ensure_prepared(st)
                send(op.raw)
                push(X_BIND)
                if st.plan.kind != r.STATEMENT or st.plan.is_ddl:
                    session.settings.track(s, st.plan)   # after the Bind: it applies to what follows
                if st.plan.sticky:
                    session.att.pin(s, st.plan, st.sql)
            elif k == OP_RAW:
                send(op.raw)
                push(op.expect)
            elif k == OP_DESC_STMT:
                st = op.st
                s.ensure_prepared(st)
                send(m.describe(b"S", st.global_name))
                push(X_DESC_STMT, fake=st)
            elif k == OP_FAKE:
                push(X_FAKE, fake=op.reply)
            elif k == OP_SYNC:
                send(m.SYNC)
                push(X_SYNC, fake=self.txn.held())
                session._t0 = time.monotonic()
            elif k == OP_FLUSH:
                send(m.FLUSH)
        session._qkind = query_kind(last) if last is not None else "other"
        session._qsql = last_sql
        s.flush()

    def local_unit(self, ops) -> bool:
        """Answer locally a pipeline of only BEGIN/COMMIT/ROLLBACK (see
        SimpleQuery.local_txn), or of only named Parses when no server is free at once.

        Strategy: a client such as pgbench prepares statements with a blocking Parse+Sync
        while its other connections hold servers in open transactions; waiting for a
        server there can deadlock the client against its own pool. Statements already
        parsed successfully somewhere are answered from the cache; others are checked on a
        free server when there is one, else on first use (Bind/Describe)."""
        session = self.session
        if session.pool_mode != "transaction":
            return False
        write = self.write
        local = True   # (a plain loop: no generator per unit)
        for op in ops:
            k = op.kind
            if not (k == OP_SYNC or k == OP_FLUSH or k == OP_FAKE
                    or (k == OP_PARSE and op.st.global_name)):
                local = False
                break
        if local:
            parses = [op.st for op in ops if op.kind == OP_PARSE]
            if not parses:   # only replies made here (pgshard.* settings, Close)
                for op in ops:
                    if op.kind == OP_FAKE:
                        write(op.reply)
                    elif op.kind == OP_SYNC:
                        write(m.ready_for_query(session._status()))
                return True
            if parses and (all(st.validated for st in parses)
                           or self._attach_now(session.targeting.any_shard(), begin=False) is None):
                for op in ops:
                    if op.kind == OP_PARSE:
                        write(m.PARSE_COMPLETE)
                    elif op.kind == OP_FAKE:
                        write(op.reply)
                    elif op.kind == OP_SYNC:
                        write(m.ready_for_query(session._status()))
                return True
            return False
        out = []
        current = None
        for op in ops:
            k = op.kind
            if k == OP_PARSE:
                if op.st.plan.kind not in TXN_KINDS:
                    return False
                out.append(("fake", m.PARSE_COMPLETE))
            elif k == OP_BIND:
                if op.st.plan.kind not in TXN_KINDS:
                    return False
                current = op.st
                out.append(("fake", m.BIND_COMPLETE))
            elif k == OP_RAW:
                if op.expect == X_EXEC and current is not None:
                    out.append(("txn", current))
                elif op.expect == X_DESC_PORTAL and current is not None:
                    out.append(("fake", m.NO_DATA))
                else:
                    return False
            elif k == OP_DESC_STMT:
                return False
            elif k == OP_FAKE:
                out.append(("fake", op.reply))
            elif k == OP_SYNC:
                out.append(("sync", None))
        for what, val in out:
            if what == "fake":
                write(val)
            elif what == "txn":
                session.simple.local_txn(val.plan.kind, val.sql)
            else:
                write(m.ready_for_query(session._status()))
        return True
