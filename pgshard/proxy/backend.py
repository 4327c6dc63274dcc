"""A server connection: connect + authenticate to PostgreSQL, then relay its replies to the
linked client. Which request each reply answers is the sans-IO ReplyMatcher's business
(pgshard.protocol.replies); this module does the I/O around it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pgshard.protocol import messages as m
from pgshard.protocol.auth import ScramClient, md5_response
from pgshard.protocol.errors import (
    ConnectionFailure,
    InvalidPassword,
    PgError,
    ProtocolViolation,
)
from pgshard.protocol.framing import BACKEND_TYPES, FrameBuffer
from pgshard.protocol.replies import (
    ASYNC_TYPES,
    AT_IDLE,
    DRAINED,
    X_BIND,
    X_CLOSE,
    X_DESC_PORTAL,
    X_DESC_STMT,
    X_EXEC,
    X_FAKE,
    X_PARSE,
    X_QUERY,
    X_SYNC,
    ReplyMatcher,
)

log = logging.getLogger("pgshard.backend")

__all__ = ["ACTIVE", "CLOSED", "CONNECTING", "IDLE", "ServerConnection", "X_BIND", "X_CLOSE",
           "X_DESC_PORTAL", "X_DESC_STMT", "X_EXEC", "X_FAKE", "X_PARSE", "X_QUERY", "X_SYNC"]

# Backend connection states (changed only through ServerConnection._set_state).
CONNECTING, IDLE, ACTIVE, CLOSED = "connecting", "idle", "active", "closed"


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
        self.replies = ReplyMatcher()
        self.expect = self.replies.expect   # the same deque: what the server still owes
        self.pid = 0
        self.secret = 0
        self.server_params: dict[str, str] = {}
        self.prepared: set[str] = set()   # global names of statements Parsed here
        self.unnamed_owner: object | None = None
        self.vars: dict[str, str] = {}    # session settings applied beyond startup
        self.synced: tuple | None = None  # (client, vars generation) last replayed here
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
    def txn_status(self) -> bytes:
        """I, T or E: the server's transaction status at its last ReadyForQuery."""
        return self.replies.txn_status

    @property
    def unsynced(self) -> int:
        """0, or 1 (look-only) / 2 (Bind/Execute) extended-protocol work not yet Synced.
        A server skipping to a Sync after an error counts as 1: only a Sync brings it back
        (it ignores every other message, a Query too), and its failed work is undone."""
        r = self.replies
        return r.unsynced or (1 if r.skipping else 0)

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
                self.replies.txn_status = body[:1]
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

    def push(self, kind: int, swallow: bool = False, fake=None) -> None:
        """Record that a reply to one request is due, in order (see ReplyMatcher.push)."""
        now = self.replies.push(kind, swallow, fake)
        if now is not None:
            self.client.write(now)

    def _relay(self) -> None:
        frames, data = self.buf.scan()
        if not frames:
            return
        client = self.client
        if client is None:
            self._idle_messages(frames, data)
            return
        replies = self.replies
        write, state = replies.feed(frames, data)
        if replies.events:
            self._handle(replies.events, client)
        if write is not None:
            client.write(b"".join(write) if type(write) is list else write)
        if state == AT_IDLE:
            client.server_idle(self)
        elif state == DRAINED:   # every reply is in, but the unit is not over (a Flush)
            drained = getattr(client, "server_drained", None)
            if drained is not None:
                drained(self)

    def _handle(self, events: list, client) -> None:
        """What the matcher saw besides bytes to forward: settings, errors, failed Parses."""
        for ev in events:
            what = ev[0]
            if what == "param":
                self.server_params[ev[1]] = ev[2]
            elif what == "error":
                client.server_error(ev[1])
                self._note_fatal(ev[1])
            elif what == "parse_failed":
                st = ev[1]
                if st.global_name:
                    self.prepared.discard(st.global_name)
                else:
                    self.unnamed_owner = None
                client.parse_failed(ev[2])
            else:   # stray_error
                self._note_fatal(ev[1])
        events.clear()

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
            elif t not in ASYNC_TYPES:
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
