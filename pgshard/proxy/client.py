"""A client session: startup and authentication, then routing each statement to a shard's
server connection and keeping the client's view of one database intact.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time

from pgshard.protocol import messages as m
from pgshard.protocol.errors import (
    ConnectionFailure,
    FeatureNotSupported,
    NoActiveSqlTransaction,
    PgError,
    ProtocolViolation,
)
from pgshard.protocol.framing import (
    FRONTEND_TYPES,
    FrameBuffer,
)
from pgshard.proxy import scatter
from pgshard.proxy.attachment import ServerAttachment
from pgshard.proxy.backend import (
    X_BIND,
    X_EXEC,
    X_FAKE,
    X_PARSE,
    X_QUERY,
    X_SYNC,
)
from pgshard.proxy.copysplit import CopySplitMixin
from pgshard.proxy.extended import ExtendedPipeline, query_kind
from pgshard.proxy.fanout import FanoutMixin
from pgshard.proxy.pipelines import PipelineMixin
from pgshard.proxy.refusals import aborted, already_in_txn, listen_error, raise_sql, sticky_fanout
from pgshard.proxy.session_state import SessionStateMixin
from pgshard.proxy.startup import StartupMixin
from pgshard.proxy.targeting import TargetingMixin
from pgshard.proxy.txn import TxnState
from pgshard.proxy.units import (
    LOCAL_KINDS,
    OP_FLUSH,
    OP_PARSE,
    OP_RAW,
    OP_SYNC,
    TXN_KINDS,
    Fanout,
    NeedColumns,
    quote_literal,
)
from pgshard.sql import classify as r
from pgshard.sql.sql_prepare import execute_call

log = logging.getLogger("pgshard.client")

_AND_CHAIN = re.compile(r"\bAND\s+CHAIN\b", re.I)


class _Terminate(Exception):
    """The client sent Terminate."""


class ClientSession(StartupMixin, TargetingMixin, SessionStateMixin, FanoutMixin,
                    PipelineMixin, CopySplitMixin, asyncio.Protocol):
    def __init__(self, proxy):
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.buf = FrameBuffer(max_size=proxy.config.proxy.max_message_size)
        self.closed = False
        self._waiter: asyncio.Future | None = None
        self._reading_paused = False
        self._serving = False
        self._pending = None
        self._pump_exc: BaseException | None = None
        self.task: asyncio.Task | None = None
        self.peer = ""
        self.user = None
        self.user_name = ""
        self.pool_mode = proxy.config.proxy.pool_mode
        self.pid = 0
        self.secret = 0
        self.tls = False
        # client limits (pgshard.proxy.limits): accepted / last heard from / last seen busy,
        # the error to answer the startup packet with when over a limit, when it was closed
        self.accepted_at = self.last_active = self.busy_at = time.monotonic()
        self.refusal: PgError | None = None
        self.reaped_at = 0.0
        self.in_tls_handshake = False
        # routing state
        self.server = None
        self.shard: str | None = None
        self.txn = TxnState()
        self.sql_prepared: dict[str, str] = {}       # SQL PREPAREs: name -> its PREPARE text
        self.fan_servers: list = []       # a fan-out's servers while it runs (cancel_running)
        self._t0 = 0.0                 # when the unit now on the server was sent (metrics)
        self._qkind = "read"
        self._qsql = None              # the statement now on the server (slow-query log)
        self._lost_error: bytes | None = None   # 08006 owed at the next Sync (server_lost)
        self.session_key: bytes | None = None
        self.local_key: bytes | None = None
        self.session_shard: str | None = None
        self.any_pick: str | None = None    # the shard _any_shard chose for this statement
        self.consistency = "strong"
        self.role = "primary"               # role of the attached server
        self.unit_wrote = False
        self.last_write: dict[str, float] = {}   # shard -> when this client's last write ended
        # session settings replayed on whichever server serves this client
        self.startup_vars: dict[str, str] = {}
        self.vars: dict[str, str] = {}
        self.vars_gen = 0
        self.param_watch: set[str] = set()   # SET just sent: adopt the value it reports
        # the server side: attaching, releasing and parking servers (attachment.py);
        # parked is the same dict, for MultiTxn.ensure and the admin console's SHOW CLIENTS
        self.att = att = ServerAttachment(self)
        self.parked = att.parked
        self._attach_now = att.attach_now   # bound once: on every statement's path
        self._detach = att.detach
        # the extended protocol (its prepared statements and the unit being queued);
        # stmts is the same dict, for the settings code (DEALLOCATE, DISCARD ALL)
        self.ext = ExtendedPipeline(self)
        self.stmts = self.ext.stmts

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data):
        self.last_active = time.monotonic()
        self.buf.feed(data)
        w = self._waiter
        if len(self.buf) > 4 * 1024 * 1024 and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        elif self._serving and w is not None and not w.done():
            # Fast path: handle what arrived right here, without waking the session task,
            # unless a step has to wait (a server to free up, say).
            try:
                aw = self._pump()
            except BaseException as exc:  # handed to the task, which ends the session
                self._pump_exc = exc
            else:
                if aw is None:
                    return
                self._pending = aw
        if w is not None and not w.done():
            w.set_result(None)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.closed = True
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        self.att.wake()

    def pause_writing(self):
        # The client reads slower than the server sends: stop reading the server (or, in
        # a fan-out read, stop merging: the shards' streams then pause their servers).
        self._fan_flow(True)
        s = self.server
        if s is not None and s.transport is not None:
            s.transport.pause_reading()

    def resume_writing(self):
        self._fan_flow(False)
        s = self.server
        if s is not None and s.transport is not None:
            s.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    # ------------------------------------------------------------ main loop

    async def _run(self):
        proxy = self.proxy
        try:
            if not await self._startup():
                return
            proxy.metrics_client_connected(self)
            await self._serve()
        except PgError as exc:
            self._send_error(exc)
            if exc.fatal or isinstance(exc, ProtocolViolation):
                log.info("closing client %s: %s", self.peer, exc.message)
        except (ConnectionError, asyncio.CancelledError, _Terminate):
            pass
        except Exception:
            log.exception("client session %s failed", self.peer)
            self._send_error(PgError("internal error in pgshard; see its log", sqlstate="XX000",
                                     severity="FATAL"))
        finally:
            self._cleanup()

    def _send_error(self, exc: PgError) -> None:
        if not self.closed and self.transport is not None:
            try:
                self.transport.write(m.error_from(exc))
            except Exception:
                pass

    async def _wait_data(self) -> None:
        if self.closed:
            raise ConnectionError("client gone")
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter
        self._waiter = None
        if self.closed and not len(self.buf):
            raise ConnectionError("client gone")

    async def _serve(self) -> None:
        self.buf.allowed = FRONTEND_TYPES
        self._serving = True
        while True:
            if self._pump_exc is not None:
                raise self._pump_exc
            aw = self._pending
            self._pending = None
            if aw is None:
                aw = self._pump()
            if aw is not None:
                await aw
                continue
            await self._wait_data()

    def _pump(self):
        """Handle every whole message buffered now; return an awaitable for the first step
        that must wait (the caller awaits it, then pumps again), else None."""
        buf = self.buf
        while True:
            msg = buf.next_frame()
            if msg is None:
                return None
            aw = self._dispatch(msg[0], msg[1])
            if aw is not None:
                return aw

    def _dispatch(self, t: int, raw: bytes):
        ext = self.ext
        if ext.skip_until_sync and t != 0x53:
            return None
        try:
            if t == 0x51:      # Query
                return self._query(raw)
            if t == 0x50:      # Parse
                ext.parse(raw)
            elif t == 0x42:    # Bind
                ext.bind(raw)
            elif t == 0x45:    # Execute
                if ext.local_portals and ext.local_execute(raw):
                    return None
                ext.ops.append((OP_RAW, raw, X_EXEC))
            elif t == 0x44:    # Describe
                ext.describe(raw)
            elif t == 0x43:    # Close
                ext.close(raw)
            elif t == 0x53:    # Sync
                ext.skip_until_sync = False
                if self._lost_error is not None:
                    err, self._lost_error = self._lost_error, None
                    ext.ops = []
                    ext.unit_shard = ext.unit_fanout = None
                    ext.unit_split = False
                    self._reply(err + m.ready_for_query(self._status()))
                    return None
                if len(raw) != 5:
                    return ext.bad_unit_end(sync=True)
                ext.ops.append((OP_SYNC,))
                return ext.flush_ops(sync=True)
            elif t == 0x48:    # Flush
                if len(raw) != 5:
                    return ext.bad_unit_end(sync=False)
                ext.ops.append((OP_FLUSH,))
                return ext.flush_ops(sync=False)
            elif t in (0x64, 0x63, 0x66):  # CopyData / CopyDone / CopyFail
                if self.copy_sink is not None:   # a COPY split by key (copysplit.py)
                    return self._copy_message(t, raw)
                s = self.server
                if s is not None:
                    s.send(raw)
                    s.flush()
                    if s.write_paused:
                        return s.drain()
            elif t == 0x46:    # FunctionCall (fastpath: libpq's large-object API)
                return self._function_call(raw)
            elif t == 0x58:    # Terminate
                raise _Terminate()
            else:
                raise ProtocolViolation(f"unexpected message type {chr(t)!r}")
        except PgError as exc:
            if exc.fatal:
                raise
            self._fail(exc, simple=(t == 0x51 or t == 0x46), synced=(t == 0x53))
        except NeedColumns as nc:
            return self._guard(self._learn_then_dispatch(nc.tables, t, raw), t == 0x51)
        return None

    async def _guard(self, coro, simple: bool, synced: bool = False) -> None:
        """Run a step that had to wait; its routing errors are reported like the rest.
        synced: the failed unit already held its Sync, so the client waits for a Z."""
        try:
            await coro
        except PgError as exc:
            if exc.fatal:
                raise
            self._fail(exc, simple, synced)

    # ------------------------------------------------------------ simple query

    def _status(self) -> bytes:
        return self.txn.status(self.server)

    def _reply(self, data: bytes) -> None:
        """A locally made reply, kept in order behind anything the server still owes."""
        s = self.server
        if s is not None:
            s.push(X_FAKE, fake=data)
        else:
            self.write(data)

    def _query(self, raw: bytes):
        ext = self.ext
        if ext.ops:
            # Extended messages before it run first, and are answered at once (a Flush):
            # the Query may go to another server.
            ext.ops.append((OP_FLUSH,))
            aw = ext.flush_ops(sync=False)
            if aw is not None:
                return self._guard(self._then_query(aw, raw), True)
        # A simple Query destroys the unnamed statement and portal, as in PostgreSQL.
        if ext.stmts:
            ext.stmts.pop("", None)
        if ext.local_portals:
            ext.local_portals.pop("", None)
        sql = m.decode_query(raw[5:])
        plan = r.plan(sql)
        kind = plan.kind
        if plan.first_word == "LISTEN" and self.pool_mode == "transaction":
            self._check_listen()
        if kind in TXN_KINDS:
            self._release_if_idle()   # a server held by a flushed Describe does not pin it
        attached = self.server is not None
        if self.txn.multi is not None and kind not in LOCAL_KINDS:
            if self.txn.multi.failed or not self._own_object(plan, sql):
                return self._guard(self._multi_query(raw, sql, plan), True)   # sticky: home
            return None
        if self.txn.failed and kind not in (r.COMMIT, r.ROLLBACK):
            raise aborted()
        if self._own_object(plan, sql):
            return None
        if kind in TXN_KINDS and not attached and self.pool_mode == "transaction":
            self._local_txn(kind, sql)
            self.write(m.ready_for_query(self._status()))
            return
        if kind == r.SET_PGSHARD or kind == r.RESET_PGSHARD:
            tag = self._set_pgshard(plan)
            self._reply(m.command_complete(tag) + m.ready_for_query(self._status()))
            return
        if kind == r.SHOW_PGSHARD:
            value = self._show_pgshard(plan.name)
            self._reply(m.row_description([(f"pgshard.{plan.name}", 25)])
                        + m.data_row([None if value is None else value.encode()])
                        + m.command_complete("SHOW") + m.ready_for_query(self._status()))
            return
        if kind == r.DEALLOCATE and not self._deallocate_on_server(plan.name):
            self._deallocate(plan.name)
            tag = "DEALLOCATE ALL" if plan.name is None else "DEALLOCATE"
            self._reply(m.command_complete(tag) + m.ready_for_query(self._status()))
            return
        if kind == r.DISCARD_ALL and self._status() == b"I":
            if self.server is None and not self.att.parked:
                self._discard_all()   # no server holds anything of this client
                self._reply(m.command_complete("DISCARD ALL") + m.ready_for_query(b"I"))
                return
            self.att.discard_parked()   # and the attached server runs it (see _track)
        if kind == r.EMPTY:
            self._reply(m.EMPTY_QUERY + m.ready_for_query(self._status()))
            return
        if not attached and self.txn.pending is not None and kind in (r.SET, r.SET_LOCAL, r.RESET):
            # Part of the held-back transaction: it runs where the transaction will.
            self.txn.pending += "; " + sql.strip().rstrip(";")
            if self.txn.snapshot is None:
                self.txn.snapshot = (dict(self.vars), None, None)
            if kind == r.SET and plan.value is not None:
                self._set_var(plan.name, plan.value)
            elif kind != r.SET_LOCAL:
                self._reset_var(plan.name, None)
            self.write(m.command_complete("RESET" if kind == r.RESET else "SET")
                       + m.ready_for_query(self._status()))
            return None
        if plan.first_word == "COPY" and kind == r.STATEMENT:
            stmt = self._copy_to_split(plan, sql)
            if stmt is not None:
                return self._guard(self._copy_split(sql, stmt), True)
        shard = self._target(plan, sql=sql)
        if self.server is not None and self._txn_elsewhere(shard):
            return self._guard(self._query_elsewhere(raw, sql, plan), True)
        if isinstance(shard, Fanout):
            if plan.sticky:
                raise sticky_fanout(plan)
            return self._guard(self._fanout(shard, [(raw, X_QUERY)], sql, simple=True), True)
        begin = kind != r.SHOW or self._show_in_txn(sql)
        role = self._role_for(shard, plan, sql) if self.proxy.replicas is not None else "primary"
        if role == "primary" and kind == r.STATEMENT and not plan.is_read:
            self.unit_wrote = True
        s = self._attach_now(shard, begin, role)
        if s is None:
            return self._guard(self._query_slow(raw, plan, shard, begin, role), True)
        self._send_query(s, raw, plan)
        return None

    async def _then_query(self, aw, raw: bytes) -> None:
        await aw
        try:
            aw2 = self._query(raw)
        except NeedColumns as nc:
            await self._learn_columns(nc.tables)
            aw2 = self._query(raw)
        if aw2 is not None:
            await aw2

    def _show_in_txn(self, sql: str) -> bool:
        """A SHOW inside a held-back transaction answers from inside it when what it shows
        may depend on it (SET LOCAL, BEGIN ISOLATION LEVEL …), or on one shard anyway.
        Otherwise it only looks, and the transaction stays free to start on any shard."""
        p = self.txn.pending
        return p is not None and (";" in p or len(self.proxy.catalog.shards) == 1
                                  or "transaction" in sql.lower() or p.strip().upper() != "BEGIN")

    def _function_call(self, raw: bytes):
        """A fastpath FunctionCall runs on the client's server, inside its transaction, and
        is answered like a Query (FunctionCallResponse or an error, then ReadyForQuery).
        Only between units: one inside an extended-protocol unit closes the connection
        (08P01), and with several shards the client must name its shard first (its large
        objects live on one shard)."""
        s = self.server
        if self.ext.ops or (s is not None and (s.unsynced or s.expect)):
            raise ProtocolViolation("a fastpath function call inside an extended-protocol "
                                    "unit is not supported")
        if self.txn.multi is not None:
            raise FeatureNotSupported(
                "a fastpath function call inside a transaction on several shards",
                hint="call the function with SELECT, or keep the transaction on one shard")
        if self.txn.failed:
            raise aborted()
        cat = self.proxy.catalog
        if len(cat.shards) > 1 and self.session_shard is None:
            raise FeatureNotSupported(
                "a fastpath function call (large objects) needs its shard: the cluster has "
                f"{len(cat.shards)}", hint="SET pgshard.shard = '<name>' first, or call the "
                "function with SELECT")
        shard = self.shard if s is not None else self._any_shard()
        role = self.role if s is not None else "primary"
        got = self._attach_now(shard, True, role)
        if got is None:
            return self._guard(self._call_slow(raw, shard, role), True)
        self._send_call(got, raw)
        return None

    async def _call_slow(self, raw: bytes, shard: str, role: str) -> None:
        self._send_call(await self.att.attach(shard, True, role), raw)

    def _send_call(self, s, raw: bytes) -> None:
        self._t0 = time.monotonic()
        self._qkind = "other"
        self._qsql = None
        s.forget_unnamed()
        s.send(raw)
        s.push(X_QUERY, fake=self.txn.held())   # answered like a Query: …, ReadyForQuery
        s.flush()

    def server_param(self, s, name: str, value: str) -> None:
        """The server reports the value a setting of this client now has (DateStyle after
        SET datestyle TO ymd is 'ISO, YMD', not 'ymd'): that value is what is replayed."""
        key = name.lower()
        if s is self.server and key in self.param_watch and key in self.vars:
            self.param_watch.discard(key)
            v = quote_literal(value)
            s.vars[key] = v
            if self.vars[key] != v:
                self.vars[key] = v
                self.vars_gen += 1

    def _txn_elsewhere(self, target) -> bool:
        """The client's server runs its transaction (or may: a reply is still due) and
        target, a shard or a Fanout, is not (only) that server's shard."""
        if self.txn.multi is not None or target is None:
            return False
        if not isinstance(target, Fanout) and target == self.shard:
            return False
        s = self.server
        return s.txn_status != b"I" or bool(s.expect)

    async def _join_multi(self) -> bool:
        """Once the server has answered: if the client's transaction is still open on it,
        make it a multi-shard transaction holding this server (True), else False."""
        while self.server is not None and self.server.expect:
            await self.att.wait_idle_point()
        s = self.server
        if s is None or s.txn_status == b"I":
            return False
        if self.proxy.twophase is None:
            raise r.CrossShardTransaction(
                f"this transaction runs on shard {self.shard}; a statement for another shard "
                "cannot join it while two-phase commit is off (two_phase_commit = false)",
                hint="commit first, or keep a transaction's statements on one shard key")
        if s.unsynced == 2:
            raise r.CrossShardTransaction(
                f"this pipeline already runs on shard {self.shard}",
                hint="send a Sync between statements for different shards")
        multi = scatter.MultiTxn(self, [], self.txn.begun or "BEGIN")
        multi.adopt(self.shard, s)
        multi.failed = s.txn_status == b"E"
        self.server = None
        self.shard = None
        self.txn.multi = multi
        return True

    async def _query_elsewhere(self, raw: bytes, sql: str, plan: r.Plan) -> None:
        if await self._join_multi():
            await self._multi_query(raw, sql, plan)
            return
        try:   # the transaction ended meanwhile: route it afresh
            aw = self._query(raw)
        except NeedColumns as nc:
            await self._learn_columns(nc.tables)
            aw = self._query(raw)
        if aw is not None:
            await aw

    async def _query_slow(self, raw: bytes, plan: r.Plan, shard: str, begin: bool,
                          role: str = "primary") -> None:
        s = await self.att.attach(shard, begin, role)
        self._send_query(s, raw, plan)

    def _send_query(self, s, raw: bytes, plan: r.Plan) -> None:
        self._track(s, plan)
        if plan.kind == r.TXN_INNER:
            if plan.first_word in ("SAVEPOINT", "RELEASE"):
                self.txn.savepoint(m.decode_query(raw[5:]), plan.first_word)
            elif plan.first_word == "SET" and self.txn.begun is not None:
                # SET TRANSACTION ISOLATION LEVEL …: shards that join later open with it
                self.txn.begun += "; " + m.decode_query(raw[5:]).strip().rstrip(";")
        if plan.sticky:
            self.att.pin(s, plan, m.decode_query(raw[5:]))
        elif plan.first_word == "EXECUTE" and self.sql_prepared:
            self._replay_sql_prepare(s, m.decode_query(raw[5:]))
        elif plan.kind == r.DEALLOCATE:
            if plan.name is None:
                s.sql_names.clear()
            else:
                s.sql_names.pop(plan.name, None)
        self._t0 = time.monotonic()
        self._qkind = query_kind(plan)
        self._qsql = raw
        s.forget_unnamed()
        s.send(raw)
        s.push(X_QUERY, fake=self.txn.held())
        s.flush()

    def _check_listen(self) -> None:
        """LISTEN pins the client to its server (sql.sticky); with several shards its
        NOTIFYs could run on another, so the client must pin a shard first."""
        if len(self.proxy.catalog.shards) > 1 and self.session_shard is None:
            raise listen_error()

    def _local_txn(self, kind: str, sql: str) -> None:
        """BEGIN/COMMIT/ROLLBACK with no server attached: the transaction starts on the
        shard of its first routed statement, so BEGIN is held back until then."""
        if kind == r.BEGIN:
            if self.txn.pending is not None:
                self.write(m.warning_from(already_in_txn()))
            else:
                self.txn.hold(sql)
            self.write(m.command_complete("BEGIN"))
            return
        chain = _AND_CHAIN.search(sql) is not None
        if self.txn.pending is None:
            if chain:
                raise NoActiveSqlTransaction(
                    f"{'ROLLBACK' if kind == r.ROLLBACK else 'COMMIT'} AND CHAIN can only be "
                    "used in transaction blocks")
            self.write(m.warning_from(NoActiveSqlTransaction("there is no transaction in progress")))
        failed = self.txn.failed
        begin = self.txn.pending.split(";", 1)[0] if chain else None
        self.txn.opened()
        if begin is not None:   # AND CHAIN: a new one at once, with the same characteristics
            self.txn.hold(begin)
        self.local_key = None
        tag = "ROLLBACK" if kind == r.ROLLBACK or failed else "COMMIT"
        snap = self.txn.snapshot
        self.txn.snapshot = None
        if snap is not None and tag == "ROLLBACK":
            self.vars = snap[0]
            self.vars_gen += 1
        self.write(m.command_complete(tag))

    def server_idle(self, s) -> None:
        """Called by the server connection when every request has been answered."""
        if s is not self.server:
            return
        if self._t0:
            elapsed = time.monotonic() - self._t0
            metrics = self.proxy.metrics
            if metrics is not None:
                metrics.query(self.shard, self.role, self._qkind, elapsed)
            slowlog = getattr(self.proxy, "slowlog", None)
            if slowlog is not None:
                slowlog.note(self, self.shard, elapsed, self._qsql)
            self._t0 = 0.0
        if self.unit_wrote and s.txn_status == b"I":
            self.last_write[self.shard] = time.monotonic()
            self.unit_wrote = False
        if self.txn.undo is not None:
            self._settle_undo(s)
        snap = self.txn.snapshot
        if snap is not None and s.txn_status == b"I":
            self.txn.snapshot = None
            if not self.txn.ending_commit:
                # Rolled back: PostgreSQL undid the SETs, and so does the replay state.
                self.vars = snap[0]
                self.vars_gen += 1
                if snap[2] is s:
                    s.restore_settings(snap[1])
            self.txn.ending_commit = False
        if s.txn_status == b"I":
            self.local_key = None
            self.txn.savepoints = []
            if self.pool_mode == "transaction" and not s.sticky:
                self._detach()
        w = self.att.idle_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def server_drained(self, s) -> None:
        """Every request sent to s has been answered, short of a Sync: a statement that
        waits to go to another shard (see _attach) may now take s off."""
        if s is self.server:
            self.att.wake()

    def server_lost(self, s, reason: str) -> None:
        """The server died under this client. If it said FATAL, the client has seen that
        and expects the connection to end; otherwise report 08006 and carry on."""
        if s is not self.server:
            return
        outstanding = any(e[0] in (X_SYNC, X_QUERY) for e in s.expect)
        self.txn.undo = None
        self.server = None
        self.shard = None
        self.local_key = None
        self.att.wake()
        if s.fatal_sent:
            if self.transport is not None:
                self.transport.close()
            return
        err = m.error_response("08006", f"lost the server connection to shard: {reason}")
        if outstanding:
            self.write(err + m.ready_for_query(b"I"))
        else:
            # Mid extended-protocol unit (a Parse/Describe flushed, say): the error answers
            # the client's next Sync, as a server's would, not a request it never made.
            self._lost_error = err
            self.ext.skip_until_sync = True

    # ------------------------------------------------------------ errors

    def _fail(self, exc: PgError, simple: bool, synced: bool = False) -> None:
        """Report a routing error as PostgreSQL would, keeping transaction state true.
        The unit it ends runs nowhere; at a Sync (synced) the client also gets its Z."""
        s = self.server
        ext = self.ext
        ops = ext.ops
        ext.reset_unit()
        if s is not None and (s.txn_status != b"I" or s.unsynced == 2):
            # The server's transaction (an explicit one, or the implicit one of a unit it
            # has run part of) must fail too, so the server raises the error itself;
            # counted when its error passes by.
            sql = raise_sql(exc)
            if simple:
                s.send(m.query(sql))
                s.push(X_QUERY, fake=self.txn.held(), bare=True)
            else:
                s.send(m.parse("", sql) + m.bind("", "") + m.execute())
                s.push(X_PARSE, swallow=True)
                s.push(X_BIND, swallow=True)
                s.push(X_EXEC, bare=True)
                if synced:
                    s.send(m.SYNC)
                    s.push(X_SYNC, fake=self.txn.held())
                else:
                    ext.skip_until_sync = True
            s.forget_unnamed()
            s.flush()
            return
        self.proxy.metrics_error(exc.sqlstate)
        out = [m.PARSE_COMPLETE for op in ops if op[0] == OP_PARSE]
        out.append(m.error_from(exc))
        self.txn.fail()
        if simple or synced:
            out.append(m.ready_for_query(self._status()))
        else:
            ext.skip_until_sync = True
        # After whatever a server that only looked still owes the client.
        self._reply(b"".join(out))
        if simple or synced:
            self._release_if_idle()

    def _replay_sql_prepare(self, s, sql: str) -> None:
        """Before an EXECUTE on s: the PREPARE it names, if s does not have it (the EXECUTE
        was routed to another shard than the PREPARE ran on)."""
        call = execute_call(sql)
        text = self.sql_prepared.get(call[0]) if call is not None else None
        if not text or s.sql_names.get(call[0]) == text:
            return
        name = call[0]
        if name in s.sql_names:   # an older definition under that name
            s.query('DEALLOCATE "' + name.replace('"', '""') + '"', swallow=True)
        s.query(text, swallow=True)
        s.sql_names[name] = text
        s.sticky = s.sticky or "SQL PREPARE"

    def _deallocate_on_server(self, name: str | None) -> bool:
        """DEALLOCATE of an SQL PREPARE (or ALL, with some): the server answers it."""
        if name is None:
            if not self.sql_prepared:
                return False
            self.ext.stmts.clear()
            self.sql_prepared.clear()
            return True
        if name in self.ext.stmts:
            return False
        self.sql_prepared.pop(name, None)
        return self.server is not None and self.server.sticky is not None or bool(self.att.parked)

    def server_error(self, body: bytes) -> None:
        """An ErrorResponse reached the client: a held-back transaction is now failed."""
        self.txn.fail()
        self.txn.undo_failed = True
        if self.proxy.metrics is not None:
            self.proxy.metrics_error(m.decode_fields(body).get("C", "XX000"))

    def parse_failed(self, client_name: str | None) -> None:
        if client_name:
            self.ext.stmts.pop(client_name, None)

    # ------------------------------------------------------------ teardown

    async def cancel_running(self) -> None:
        """The client's CancelRequest: to every server running something of its (its own,
        a multi-shard transaction's, a fan-out's)."""
        servers = [self.server] if self.server is not None else []
        if self.txn.multi is not None:
            servers += [s for _, s in self.txn.multi.servers.values()]
        servers += self.fan_servers
        await asyncio.gather(*(s.cancel() for s in servers if s.pid and s.expect))

    def _cleanup(self) -> None:
        self.closed = True
        proxy = self.proxy
        proxy.unregister(self)
        proxy.limits.release(self)
        self.att.give_back_all()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        proxy.metrics_client_disconnected(self)


__all__ = ["ClientSession", "ConnectionFailure", "FeatureNotSupported"]
