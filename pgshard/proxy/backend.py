"""A server connection: connect + authenticate to PostgreSQL, then relay its replies to the
linked client, matching each reply to the request that caused it.

Strategy: every request the proxy sends to the server pushes an expectation onto a queue,
in order. Replies are matched against the head of the queue, which lets the proxy swallow
replies to requests the client never made (a re-Parse on a connection that lacked a
statement, a replayed SET) and inject replies to requests the server never saw (a
ParseComplete for a statement the server already had) at exactly the right position. Only
message headers are read; DataRow and CopyData bytes are forwarded as contiguous slices.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from pgshard.protocol import messages as m
from pgshard.protocol.auth import ScramClient, md5_response
from pgshard.protocol.errors import (
    ConnectionFailure,
    InvalidPassword,
    PgError,
    ProtocolViolation,
)
from pgshard.protocol.framing import BACKEND_TYPES, FrameBuffer

log = logging.getLogger("pgshard.backend")

# Expectation kinds.
X_PARSE, X_BIND, X_DESC_STMT, X_DESC_PORTAL, X_EXEC, X_CLOSE, X_SYNC, X_QUERY, X_FAKE = range(9)

_EXEC_END = frozenset(b"CIs")
_ASYNC = frozenset(b"NAS")   # notice, notification, parameter status: may come any time

# Backend connection states (changed only through ServerConnection._set_state).
CONNECTING, IDLE, ACTIVE, CLOSED = "connecting", "idle", "active", "closed"


def _param_oids(body: bytes) -> tuple[int, ...]:
    n = int.from_bytes(body[:2], "big")
    return tuple(int.from_bytes(body[2 + 4 * i:6 + 4 * i], "big") for i in range(n))


class ServerConnection(asyncio.Protocol):
    """One connection to a PostgreSQL server, owned by a BackendPool."""

    def __init__(self, pool, host: str, port: int, params: dict[str, str]):
        self.pool = pool
        self.host = host
        self.port = port
        self.startup_params = params
        self.transport: asyncio.Transport | None = None
        self.buf = FrameBuffer(allowed=BACKEND_TYPES)
        self.state = CONNECTING
        self.client = None                # the linked ClientSession while ACTIVE
        self.expect: deque[list] = deque()
        self.txn_status = b"I"
        self.pid = 0
        self.secret = 0
        self.server_params: dict[str, str] = {}
        self.prepared: set[str] = set()   # global names of statements Parsed here
        self.unnamed_owner: object | None = None
        self.vars: dict[str, str] = {}    # session settings applied beyond startup
        self.synced: tuple | None = None  # (client, vars generation) last replayed here
        # Extended-protocol work sent since the last Sync/Query: 0 none, 1 only Parse/
        # Describe/Close (harmless to Sync), 2 a Bind or Execute (a Sync would commit it).
        self.unsynced = 0
        self.wbuf: list[bytes] = []
        self.created = time.monotonic()
        self.last_used = self.created
        self.dirty = False                # in an unknown state: never reuse
        self.fatal_sent = False           # a FATAL from the server reached the client
        self._waiter: asyncio.Future | None = None
        self._write_paused = False
        self._drain: asyncio.Future | None = None
        self.closed_reason = ""

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes):
        self.buf.feed(data)
        if self.state == CONNECTING:
            self._wake()
            return
        try:
            self._relay()
        except PgError as exc:
            log.warning("server %s:%s sent bad data: %s", self.host, self.port, exc)
            self.abort(f"protocol violation from server: {exc.message}")

    def connection_lost(self, exc):
        prev = self.state
        self._set_state(CLOSED)
        self._wake()
        if self._drain and not self._drain.done():
            self._drain.set_result(None)
        client = self.client
        if client is not None and prev == ACTIVE:
            self.client = None
            client.server_lost(self, self.closed_reason or "server closed the connection unexpectedly")

    def pause_writing(self):
        self._write_paused = True

    def resume_writing(self):
        self._write_paused = False
        if self._drain and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self):
        if self._write_paused and self.state != CLOSED:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    # ------------------------------------------------------------ state

    def _set_state(self, state: str) -> None:
        old = self.state
        if old == state:
            return
        self.state = state
        self.pool.on_state_change(self, old, state)

    def _wake(self):
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    @property
    def usable(self) -> bool:
        return self.state != CLOSED and not self.dirty and self.transport is not None \
            and not self.transport.is_closing()

    # ------------------------------------------------------------ connect + auth

    async def _next(self, timeout: float) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.buf.next_message()
            if msg is not None:
                return msg
            if self.state == CLOSED:
                raise ConnectionFailure(f"server {self.host}:{self.port} closed the connection "
                                        "during startup")
            self._waiter = asyncio.get_running_loop().create_future()
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectionFailure(f"timeout connecting to server {self.host}:{self.port}")
            try:
                await asyncio.wait_for(self._waiter, left)
            except TimeoutError:
                raise ConnectionFailure(
                    f"timeout connecting to server {self.host}:{self.port}") from None

    async def startup(self, user: str, password: str, timeout: float) -> None:
        """Send the StartupMessage, authenticate, and wait for ReadyForQuery."""
        self.transport.write(m.startup_message(self.startup_params))
        scram: ScramClient | None = None
        while True:
            t, body = await self._next(timeout)
            if t == 0x52:  # 'R'
                code, data = m.decode_auth(body)
                if code == 0:
                    continue
                if code == 3:
                    self.transport.write(m.password_message(password.encode() + b"\0"))
                elif code == 5:
                    self.transport.write(m.password_message(md5_response(user, password, data) + b"\0"))
                elif code == 10:
                    mechs = m.decode_sasl_mechanisms(data)
                    if ScramClient.mechanism not in mechs:
                        raise ConnectionFailure(f"server offers no supported SASL mechanism: {mechs}")
                    scram = ScramClient(user, password)
                    self.transport.write(m.sasl_initial_response(scram.mechanism, scram.initial()))
                elif code == 11 and scram is not None:
                    self.transport.write(m.sasl_response(scram.handle_continue(data)))
                elif code == 12 and scram is not None:
                    scram.handle_final(data)
                else:
                    raise ConnectionFailure(f"unsupported authentication request {code} from server")
            elif t == 0x53:  # 'S'
                k, v = m.decode_parameter_status(body)
                self.server_params[k] = v
            elif t == 0x4B:  # 'K'
                self.pid, self.secret = m.decode_backend_key(body)
            elif t == 0x5A:  # 'Z'
                self.txn_status = body[:1]
                self._set_state(IDLE)
                return
            elif t == 0x45:  # 'E'
                err = m.error_to_exception(body)
                if err.sqlstate == "28P01":
                    raise InvalidPassword(f"server {self.host}:{self.port} rejected the proxy's "
                                          f"credentials: {err.message}", severity="ERROR")
                raise err
            elif t == 0x4E:  # 'N'
                continue
            else:
                raise ProtocolViolation(f"unexpected message {chr(t)!r} during server startup")

    # ------------------------------------------------------------ relay

    def link(self, client) -> None:
        self.client = client
        self.last_used = time.monotonic()
        self._set_state(ACTIVE)

    def unlink(self) -> None:
        self.client = None
        self.last_used = time.monotonic()

    def send(self, data: bytes) -> None:
        """Queue bytes for the server; flush() writes them in one call."""
        self.wbuf.append(data)

    def flush(self) -> None:
        wb = self.wbuf
        if wb:
            self.wbuf = []
            if self.transport is not None:
                self.transport.write(wb[0] if len(wb) == 1 else b"".join(wb))

    def push(self, kind: int, swallow: bool = False, fake: bytes | None = None) -> None:
        """Record that a reply to one request is due, in order."""
        if kind == X_FAKE:
            if not self.expect:
                self.client.write(fake)
                return
        elif kind < X_SYNC:
            if kind == X_BIND or kind == X_EXEC:
                self.unsynced = 2
            elif not self.unsynced:
                self.unsynced = 1
        else:
            self.unsynced = 0
        self.expect.append([kind, swallow, fake])

    def _relay(self) -> None:
        frames, data = self.buf.scan()
        if not frames:
            return
        client = self.client
        if client is None:
            self._idle_messages(frames, data)
            return
        expect = self.expect
        out = []
        span = 0          # start of the pending forwarded span in data
        at_idle = False
        for t, s, e in frames:
            keep = True
            if t in _ASYNC:
                if t == 0x53:
                    k, v = m.decode_parameter_status(data[s + 5:e])
                    self.server_params[k] = v
            elif not expect:
                # A reply nobody asked for (e.g. an ErrorResponse before a shutdown).
                if t == 0x45:
                    self._note_fatal(data[s + 5:e])
            elif t == 0x5A:  # ReadyForQuery
                head = expect.popleft()
                status = self.txn_status = data[s + 5:s + 6]
                keep = not head[1]
                at_idle = not expect
                if keep and status == b"I" and getattr(client, "pending_begin", None) is not None:
                    # The client is in a transaction whose BEGIN is still held back (this
                    # server only looked, e.g. a Describe): say so, as one database would.
                    keep = False
                    if span < s:
                        out.append(data[span:s])
                    span = e
                    out.append(m.ready_for_query(b"E" if client.pending_failed else b"T"))
            elif t == 0x45:  # ErrorResponse: always forwarded
                client.server_error(data[s + 5:e])
                head = expect[0]
                if head[0] != X_QUERY:
                    if head[0] == X_PARSE and head[2]:
                        # The statement does not exist here (nor, for the client, at all).
                        st, cname = head[2]
                        if st.global_name:
                            self.prepared.discard(st.global_name)
                        else:
                            self.unnamed_owner = None
                        client.parse_failed(cname)
                    # The server now skips everything up to the next Sync.
                    while expect and expect[0][0] != X_SYNC:
                        expect.popleft()
                self._note_fatal(data[s + 5:e])
            else:
                head = expect[0]
                kind = head[0]
                if kind == X_QUERY or kind == X_EXEC:
                    keep = not head[1]
                    if kind == X_EXEC and t in _EXEC_END:
                        expect.popleft()
                elif kind == X_DESC_STMT and t == 0x74:  # ParameterDescription
                    keep = not head[1]
                    head[0] = X_DESC_PORTAL
                    st = head[2]
                    if st is not None and st.described_oids is None:
                        st.described_oids = _param_oids(data[s + 5:e])
                else:
                    keep = not head[1]
                    expect.popleft()
                    if kind == X_PARSE and t == 0x31 and head[2]:
                        head[2][0].validated = True
            if not keep:
                if span < s:
                    out.append(data[span:s])
                span = e
            # Fakes at the head of the queue go out now, in order.
            while expect and expect[0][0] == X_FAKE:
                if span < e:
                    out.append(data[span:e])
                span = e
                out.append(expect.popleft()[2])
        if span == 0:
            client.write(data)
        else:
            if span < len(data):
                out.append(data[span:])
            if out:
                client.write(b"".join(out))
        if not expect:
            if at_idle:
                client.server_idle(self)
            else:   # every reply is in, but the unit is not over (a Flush, not a Sync)
                drained = getattr(client, "server_drained", None)
                if drained is not None:
                    drained(self)

    def _note_fatal(self, body: bytes) -> None:
        f = m.decode_fields(body)
        if f.get("V", f.get("S")) in ("FATAL", "PANIC"):
            self.dirty = True
            self.fatal_sent = self.client is not None
            self.closed_reason = f.get("M", "server terminated the connection")

    def _idle_messages(self, frames, data) -> None:
        for t, s, e in frames:
            if t == 0x53:
                k, v = m.decode_parameter_status(data[s + 5:e])
                self.server_params[k] = v
            elif t == 0x45:
                self._note_fatal(data[s + 5:e])
                self.dirty = True
            elif t not in _ASYNC:
                self.dirty = True
        if self.dirty:
            self.abort("server sent an error while idle")

    def abort(self, reason: str) -> None:
        self.closed_reason = reason
        self.dirty = True
        if self.transport is not None:
            self.transport.abort()

    def terminate(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(m.TERMINATE)
            self.transport.close()
