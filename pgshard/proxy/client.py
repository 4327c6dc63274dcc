"""A client session: startup and authentication, then routing each statement to a shard's
server connection and keeping the client's view of one database intact.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from pgshard.protocol import messages as m
from pgshard.protocol.errors import (
    ConnectionFailure,
    FeatureNotSupported,
    InternalError,
    PgError,
    ProtocolViolation,
)
from pgshard.protocol.framing import (
    FRONTEND_TYPES,
    FrameBuffer,
)
from pgshard.proxy.attachment import ServerAttachment
from pgshard.proxy.backend import (
    X_BIND,
    X_EXEC,
    X_FAKE,
    X_PARSE,
    X_QUERY,
    X_SYNC,
    ServerClient,
)
from pgshard.proxy.copysplit import CopySplit
from pgshard.proxy.extended import ExtendedPipeline
from pgshard.proxy.fanout import FanoutRunner
from pgshard.proxy.pipelines import PipelineRunner
from pgshard.proxy.refusals import raise_sql
from pgshard.proxy.session_state import SessionSettings
from pgshard.proxy.simple import SimpleQuery
from pgshard.proxy.startup import Startup
from pgshard.proxy.targeting import Targeting
from pgshard.proxy.txn import TxnState
from pgshard.proxy.units import FLUSH_OP, OP_PARSE, SYNC_OP, RawOp

log = logging.getLogger("pgshard.client")

class _Terminate(Exception):
    """The client sent Terminate."""


class ClientSession(asyncio.Protocol,
                    ServerClient):
    """One client connection: the asyncio protocol (its socket's callbacks and the pump
    that reads whole messages), dispatch of each message, the server connection callbacks
    (ServerClient), errors and teardown. Its parts are composed: the simple protocol
    (`simple`, simple.py), the extended-protocol pipeline (`ext`, extended.py) and the
    server attachment (`att`, attachment.py), the units on several shards (`fan`,
    fanout.py; `pipes`, pipelines.py), COPY split by key (`copy`, copysplit.py), the
    startup (`startup`, startup.py), the settings (`settings`, session_state.py) and the
    routing of each statement (`targeting`, targeting.py)."""

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
        self.consistency = "strong"
        self.role = "primary"               # role of the attached server
        self.unit_wrote = False
        self.last_write: dict[str, float] = {}   # shard -> when this client's last write ended
        # session settings replayed on whichever server serves this client
        self.settings = SessionSettings(self)   # SET/RESET tracked and replayed
        # The logical database the client logged in to ([proxy] database or a [[databases]]
        # name); passed to Proxy.pool_for. None until startup: the main one.
        self.database: str | None = None
        self.targeting = Targeting(self)   # where each statement goes (targeting.py)
        self.startup = Startup(self)   # the startup packet, TLS, authentication, greeting
        # the server side: attaching, releasing and parking servers (attachment.py);
        # parked is the same dict, for MultiTxn.ensure and the admin console's SHOW CLIENTS
        self.att = ServerAttachment(self)
        self.parked = self.att.parked
        # the extended protocol (its prepared statements and the unit being queued);
        # stmts is the same dict, for the settings code (DEALLOCATE, DISCARD ALL)
        self.fan = FanoutRunner(self)   # units on several shards (fanout.py)
        self.pipes = PipelineRunner(self)   # pipelines on several shards (pipelines.py)
        self.copy = CopySplit(self)   # COPY FROM STDIN split by key (copysplit.py)
        self.ext = ExtendedPipeline(self)
        # the simple protocol (a Query routed or answered here; FunctionCall)
        self.simple = SimpleQuery(self)

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
        self.fan.fan_flow(True)
        s = self.server
        if s is not None and s.transport is not None:
            s.transport.pause_reading()

    def resume_writing(self):
        self.fan.fan_flow(False)
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
            if not await self.startup.run():
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
            self._send_error(InternalError("internal error in pgshard; see its log",
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
                return self.simple.query(raw)
            if t == 0x50:      # Parse
                ext.parse(raw)
            elif t == 0x42:    # Bind
                return ext.bind(raw)
            elif t == 0x45:    # Execute
                if ext.local_portals and ext.local_execute(raw):
                    return None
                ext.ops.append(RawOp(raw, X_EXEC))
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
                ext.ops.append(SYNC_OP)
                return ext.flush_ops(sync=True)
            elif t == 0x48:    # Flush
                if len(raw) != 5:
                    return ext.bad_unit_end(sync=False)
                ext.ops.append(FLUSH_OP)
                return ext.flush_ops(sync=False)
            elif t in (0x64, 0x63, 0x66):  # CopyData / CopyDone / CopyFail
                if self.copy.sink is not None:   # a COPY split by key (copysplit.py)
                    return self.copy.copy_message(t, raw)
                s = self.server
                if s is not None:
                    s.send(raw)
                    s.flush()
                    if s.write_paused:
                        return s.drain()
            elif t == 0x46:    # FunctionCall (fastpath: libpq's large-object API)
                return self.simple.function_call(raw)
            elif t == 0x58:    # Terminate
                raise _Terminate()
            else:
                raise ProtocolViolation(f"unexpected message type {chr(t)!r}")
        except PgError as exc:
            if exc.fatal:
                raise
            self._fail(exc, simple=(t == 0x51 or t == 0x46), synced=(t == 0x53))
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

    def discard_all(self) -> None:
        """DISCARD ALL: no statement, SQL PREPARE or setting of the client's own is left."""
        self.ext.stmts.clear()
        self.sql_prepared.clear()
        self.settings.discard()

    def server_param(self, s, name: str, value: str) -> None:
        """The server reports the value a setting of this client now has (DateStyle after
        SET datestyle TO ymd is 'ISO, YMD', not 'ymd'): that value is what is replayed.
        The last report of the unit counts (the watch ends at its idle point): a replay of
        the setting sent before the SET reports too, and first."""
        if s is self.server:
            self.settings.adopt(s, name, value)

    def server_idle(self, s) -> None:
        """Called by the server connection when every request has been answered."""
        if s is not self.server:
            return
        if self._t0:
            elapsed = time.monotonic() - self._t0
            proxy = self.proxy
            metrics = proxy.metrics
            if metrics is not None:
                metrics.query(self.shard, self.role, self._qkind, elapsed)
            # The slow-query log is called only for a statement it logs (off: -1).
            if elapsed * 1000.0 >= proxy.config.proxy.slow_query_ms >= 0:
                slowlog = getattr(proxy, "slowlog", None)
                if slowlog is not None:
                    slowlog.note(self, self.shard, elapsed, self._qsql)
            self._t0 = 0.0
        if self.unit_wrote and s.txn_status == b"I":
            self.last_write[self.shard] = time.monotonic()
            self.unit_wrote = False
        self.settings.unit_over(s)
        if s.txn_status == b"I":
            self.local_key = None
            self.txn.savepoints = []
            if self.pool_mode == "transaction" and not s.sticky:
                self.att.detach()
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
        err = m.error_from(ConnectionFailure(f"lost the server connection to shard: {reason}"))
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
        if s is not None and s.skipping:
            # An earlier message of the client's failed on its server, which now ignores
            # everything up to the client's Sync (a Query raising this error there would
            # never be answered). PostgreSQL skips this message too: no error of its own.
            if synced:
                s.send(m.SYNC)
                s.push(X_SYNC, fake=self.txn.held())
                s.flush()
            else:
                ext.skip_until_sync = True
            return
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
        out = [m.PARSE_COMPLETE for op in ops if op.kind == OP_PARSE]
        out.append(m.error_from(exc))
        self.txn.fail()
        if simple or synced:
            out.append(m.ready_for_query(self._status()))
        else:
            ext.skip_until_sync = True
        # After whatever a server that only looked still owes the client.
        self._reply(b"".join(out))
        if simple or synced:
            self.fan.release_if_idle()

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
