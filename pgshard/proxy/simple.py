"""A client session's simple-query protocol: each Query routed to its shard (or answered
here: pgshard.* settings, a held-back BEGIN/COMMIT/ROLLBACK, DEALLOCATE of a protocol-level
statement), a transaction that a statement for another shard makes span several shards, and
the fastpath FunctionCall."""

from __future__ import annotations

import re
import time

from pgshard.protocol import messages as m
from pgshard.protocol.errors import FeatureNotSupported, NoActiveSqlTransaction, ProtocolViolation
from pgshard.proxy import scatter
from pgshard.proxy.backend import X_QUERY
from pgshard.proxy.extended import query_kind
from pgshard.proxy.refusals import aborted, already_in_txn, listen_error, sticky_fanout
from pgshard.proxy.units import FLUSH_OP, LOCAL_KINDS, TXN_KINDS, Fanout, Wait
from pgshard.sql import classify as r

_AND_CHAIN = re.compile(r"\bAND\s+CHAIN\b", re.I)


class SimpleQuery:
    """The simple protocol of one ClientSession (held as `session.simple`): query() takes a
    Query message and either answers it here or sends it to the server it routes to (an
    awaitable when that must wait). The session's state (its server, transaction, settings,
    targeting) is reached through `session`."""

    __slots__ = ("session", "proxy", "txn", "ext", "attach_now", "_target", "_own_object",
                 "_reply", "_status", "_guard", "write")

    def __init__(self, session):
        # what every Query uses, bound once (cheaper than through the session each time)
        self.session = session
        self.proxy = session.proxy
        self.txn = session.txn
        self.ext = session.ext
        self.attach_now = session.att.attach_now
        self._target = session.targeting.target
        self._own_object = session.copy.own_object
        self._reply = session._reply
        self._status = session._status
        self._guard = session._guard
        self.write = session.write

    def query(self, raw: bytes):
        session = self.session
        txn = self.txn
        ext = self.ext
        if ext.ops:
            # Extended messages before it run first, and are answered at once (a Flush):
            # the Query may go to another server.
            ext.ops.append(FLUSH_OP)
            aw = ext.flush_ops(sync=False)
            if aw is not None:
                return self._guard(self.then_query(aw, raw), True)
        # A simple Query destroys the unnamed statement and portal, as in PostgreSQL.
        if ext.stmts:
            ext.stmts.pop("", None)
        if ext.local_portals:
            ext.local_portals.pop("", None)
        sql = m.query_text(raw)
        plan = r.plan(sql)
        kind = plan.kind
        if plan.first_word == "LISTEN" and session.pool_mode == "transaction":
            self.check_listen()
        if kind in TXN_KINDS:
            session.fan.release_if_idle()   # a server held by a flushed Describe does not pin it
        attached = session.server is not None
        if txn.multi is not None and kind not in LOCAL_KINDS:
            if txn.multi.failed or not self._own_object(plan, sql):
                return self._guard(session.fan.multi_query(raw, sql, plan), True)   # sticky: home
            return None
        if txn.failed and kind not in (r.COMMIT, r.ROLLBACK):
            raise aborted()
        if (plan.is_ddl or plan.first_word == "COPY") and self._own_object(plan, sql):
            return None   # (the test before the call is own_object's own first one)
        if kind in TXN_KINDS and not attached and session.pool_mode == "transaction":
            self.local_txn(kind, sql)
            self.write(m.ready_for_query(self._status()))
            return
        if kind == r.SET_PGSHARD or kind == r.RESET_PGSHARD:
            tag = session.settings.set_pgshard(plan)
            self._reply(m.command_complete(tag) + m.ready_for_query(self._status()))
            return
        if kind == r.SHOW_PGSHARD:
            value = session.settings.show_pgshard(plan.name)
            self._reply(m.row_description([(f"pgshard.{plan.name}", 25)])
                        + m.data_row([None if value is None else value.encode()])
                        + m.command_complete("SHOW") + m.ready_for_query(self._status()))
            return
        if kind == r.DEALLOCATE and not self.deallocate_on_server(plan.name):
            session.ext.deallocate(plan.name)
            tag = "DEALLOCATE ALL" if plan.name is None else "DEALLOCATE"
            self._reply(m.command_complete(tag) + m.ready_for_query(self._status()))
            return
        if kind == r.DISCARD_ALL and self._status() == b"I":
            if session.server is None and not session.att.parked:
                session.discard_all()   # no server holds anything of this client
                self._reply(m.command_complete("DISCARD ALL") + m.ready_for_query(b"I"))
                return
            session.att.discard_parked()   # and the attached server runs it (see _track)
        if kind == r.EMPTY:
            self._reply(m.EMPTY_QUERY + m.ready_for_query(self._status()))
            return
        if not attached and txn.pending is not None and kind in (r.SET, r.SET_LOCAL, r.RESET):
            # Part of the held-back transaction: it runs where the transaction will.
            txn.pending += "; " + sql.strip().rstrip(";")
            if txn.snapshot is None:
                txn.snapshot = (dict(session.settings.vars), None, None)
            if kind == r.SET and plan.value is not None:
                session.settings.set(plan.name, plan.value)
            elif kind != r.SET_LOCAL:
                session.settings.reset(plan.name, None)
            self.write(m.command_complete("RESET" if kind == r.RESET else "SET")
                       + m.ready_for_query(self._status()))
            return None
        if plan.first_word == "COPY" and kind == r.STATEMENT:
            stmt = session.copy.copy_to_split(plan, sql)
            if stmt is not None:
                return self._guard(session.copy.copy_split(sql, stmt), True)
        shard = self._target(plan, sql=sql)
        if type(shard) is not str and isinstance(shard, Wait):
            return self._guard(self.then_query(shard.run(session), raw), True)
        if session.server is not None and self.txn_elsewhere(shard):
            return self._guard(self.query_elsewhere(raw, sql, plan), True)
        if isinstance(shard, Fanout):
            if plan.sticky:
                raise sticky_fanout(plan)
            return self._guard(session.fan.fanout(shard, [(raw, X_QUERY)], sql, simple=True), True)
        begin = kind != r.SHOW or self.show_in_txn(sql)
        role = session.targeting.role_for(shard, plan, sql) if self.proxy.replicas is not None else "primary"
        if role == "primary" and kind == r.STATEMENT and not plan.is_read:
            session.unit_wrote = True
        s = self.attach_now(shard, begin, role)
        if s is None:
            return self._guard(self.query_slow(raw, plan, shard, begin, role), True)
        self.send_query(s, raw, plan)
        return None

    async def then_query(self, aw, raw: bytes) -> None:
        await aw
        await self.query_again(raw)

    async def query_again(self, raw: bytes) -> None:
        """Route and run a Query afresh (after a wait; it may wait again)."""
        aw = self.query(raw)
        if aw is not None:
            await aw

    def show_in_txn(self, sql: str) -> bool:
        """A SHOW inside a held-back transaction answers from inside it when what it shows
        may depend on it (SET LOCAL, BEGIN ISOLATION LEVEL …), or on one shard anyway.
        Otherwise it only looks, and the transaction stays free to start on any shard."""
        txn = self.txn
        p = txn.pending
        return p is not None and (";" in p or len(self.proxy.catalog.shards) == 1
                                  or "transaction" in sql.lower() or p.strip().upper() != "BEGIN")

    def function_call(self, raw: bytes):
        """A fastpath FunctionCall runs on the client's server, inside its transaction, and
        is answered like a Query (FunctionCallResponse or an error, then ReadyForQuery).
        Only between units: one inside an extended-protocol unit closes the connection
        (08P01), and with several shards the client must name its shard first (its large
        objects live on one shard)."""
        session = self.session
        txn = self.txn
        s = session.server
        if session.ext.ops or (s is not None and (s.unsynced or s.expect)):
            raise ProtocolViolation("a fastpath function call inside an extended-protocol "
                                    "unit is not supported")
        if txn.multi is not None:
            raise FeatureNotSupported(
                "a fastpath function call inside a transaction on several shards",
                hint="call the function with SELECT, or keep the transaction on one shard")
        if txn.failed:
            raise aborted()
        cat = self.proxy.catalog
        if len(cat.shards) > 1 and session.session_shard is None:
            raise FeatureNotSupported(
                "a fastpath function call (large objects) needs its shard: the cluster has "
                f"{len(cat.shards)}", hint="SET pgshard.shard = '<name>' first, or call the "
                "function with SELECT")
        shard = session.shard if s is not None else session.targeting.any_shard()
        role = session.role if s is not None else "primary"
        got = self.attach_now(shard, True, role)
        if got is None:
            return self._guard(self.call_slow(raw, shard, role), True)
        self.send_call(got, raw)
        return None

    async def call_slow(self, raw: bytes, shard: str, role: str) -> None:
        session = self.session
        self.send_call(await session.att.attach(shard, True, role), raw)

    def send_call(self, s, raw: bytes) -> None:
        session = self.session
        txn = self.txn
        session._t0 = time.monotonic()
        session._qkind = "other"
        session._qsql = None
        s.forget_unnamed()
        s.send(raw)
        s.push(X_QUERY, fake=txn.held())   # answered like a Query: …, ReadyForQuery
        s.flush()

    def txn_elsewhere(self, target) -> bool:
        """The client's server runs its transaction (or may: a reply is still due) and
        target, a shard or a Fanout, is not (only) that server's shard."""
        session = self.session
        txn = self.txn
        if txn.multi is not None or target is None:
            return False
        if not isinstance(target, Fanout) and target == session.shard:
            return False
        s = session.server
        return s.txn_status != b"I" or bool(s.expect)

    async def answered(self) -> None:
        """Until the client's server has answered everything sent to it."""
        session = self.session
        while session.server is not None and session.server.expect:
            await session.att.wait_idle_point()

    def skipped_to_sync(self) -> bool:
        """An extended-protocol message sent before this one failed on the client's server,
        which ignores everything up to the client's Sync: so does the session here (True),
        as PostgreSQL would ignore the message at hand."""
        s = self.session.server
        if s is None or not s.skipping:
            return False
        self.ext.skip_until_sync = True
        return True

    async def join_multi(self) -> bool:
        """Once the server has answered: if the client's transaction is still open on it,
        make it a multi-shard transaction holding this server (True), else False."""
        session = self.session
        txn = self.txn
        await self.answered()
        s = session.server
        if s is None or s.txn_status == b"I":
            return False
        if self.proxy.twophase is None:
            raise r.CrossShardTransaction(
                f"this transaction runs on shard {session.shard}; a statement for another shard "
                "cannot join it while two-phase commit is off (two_phase_commit = false)",
                hint="commit first, or keep a transaction's statements on one shard key")
        if s.unsynced == 2:
            raise r.CrossShardTransaction(
                f"this pipeline already runs on shard {session.shard}",
                hint="send a Sync between statements for different shards")
        multi = scatter.MultiTxn(session, [], txn.begun or "BEGIN")
        multi.adopt(session.shard, s)
        multi.failed = s.txn_status == b"E"
        session.server = None
        session.shard = None
        txn.multi = multi
        return True

    async def query_elsewhere(self, raw: bytes, sql: str, plan: r.Plan) -> None:
        session = self.session
        await self.answered()
        if self.skipped_to_sync():   # the Query came after extended messages that failed
            return
        if await self.join_multi():
            await session.fan.multi_query(raw, sql, plan)
            return
        await self.query_again(raw)   # the transaction ended meanwhile: route it afresh

    async def query_slow(self, raw: bytes, plan: r.Plan, shard: str, begin: bool,
                          role: str = "primary") -> None:
        session = self.session
        s = await session.att.attach(shard, begin, role)
        self.send_query(s, raw, plan)

    def send_query(self, s, raw: bytes, plan: r.Plan) -> None:
        session = self.session
        txn = self.txn
        session.settings.track(s, plan)
        if plan.kind == r.TXN_INNER:
            if plan.first_word in ("SAVEPOINT", "RELEASE"):
                txn.savepoint(m.decode_query(raw[5:]), plan.first_word)
            elif plan.first_word == "SET" and txn.begun is not None:
                # SET TRANSACTION ISOLATION LEVEL …: shards that join later open with it
                txn.begun += "; " + m.decode_query(raw[5:]).strip().rstrip(";")
        if plan.sticky:
            session.att.pin(s, plan, m.decode_query(raw[5:]))
        elif plan.first_word == "EXECUTE" and session.sql_prepared:
            session.att.replay_sql_prepare(s, m.decode_query(raw[5:]))
        elif plan.kind == r.DEALLOCATE:
            s.forget_sql_prepare(plan.name)
        session._t0 = time.monotonic()
        session._qkind = query_kind(plan)
        session._qsql = raw
        s.forget_unnamed()
        s.send(raw)
        s.push(X_QUERY, fake=txn.held())
        s.flush()

    def check_listen(self) -> None:
        """LISTEN pins the client to its server (sql.sticky); with several shards its
        NOTIFYs could run on another, so the client must pin a shard first."""
        session = self.session
        if len(session.proxy.catalog.shards) > 1 and session.session_shard is None:
            raise listen_error()

    def local_txn(self, kind: str, sql: str) -> None:
        """BEGIN/COMMIT/ROLLBACK with no server attached: the transaction starts on the
        shard of its first routed statement, so BEGIN is held back until then."""
        session = self.session
        txn = self.txn
        if kind == r.BEGIN:
            if txn.pending is not None:
                self.write(m.warning_from(already_in_txn()))
            else:
                txn.hold(sql)
            self.write(m.command_complete("BEGIN"))
            return
        chain = _AND_CHAIN.search(sql) is not None
        if txn.pending is None:
            if chain:
                raise NoActiveSqlTransaction(
                    f"{'ROLLBACK' if kind == r.ROLLBACK else 'COMMIT'} AND CHAIN can only be "
                    "used in transaction blocks")
            self.write(m.warning_from(NoActiveSqlTransaction("there is no transaction in progress")))
        failed = txn.failed
        begin = txn.pending.split(";", 1)[0] if chain else None
        txn.opened()
        if begin is not None:   # AND CHAIN: a new one at once, with the same characteristics
            txn.hold(begin)
        session.local_key = None
        tag = "ROLLBACK" if kind == r.ROLLBACK or failed else "COMMIT"
        snap = txn.snapshot
        txn.snapshot = None
        if snap is not None and tag == "ROLLBACK":
            session.settings.restore(snap[0])
        self.write(m.command_complete(tag))

    def deallocate_on_server(self, name: str | None) -> bool:
        """DEALLOCATE of an SQL PREPARE (or ALL, with some): the server answers it."""
        session = self.session
        if name is None:
            if not session.sql_prepared:
                return False
            session.ext.stmts.clear()
            session.sql_prepared.clear()
            return True
        if name in session.ext.stmts:
            return False
        session.sql_prepared.pop(name, None)
        return session.server is not None and session.server.sticky is not None or bool(session.att.parked)
