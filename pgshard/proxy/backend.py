"""A server connection: connect + authenticate to PostgreSQL, then relay its replies to the
linked client. Which request each reply answers is the sans-IO ReplyMatcher's business
(pgshard.protocol.replies); this module does the I/O around it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

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


UNSURE = "\x00unknown"   # a setting's value on a server that is not known (settings_unsure)


def _reset_if_known(name: str) -> str:
    """RESET name, where name may not be a setting at all (a SET of it failed): back to its
    reset value if the server has such a setting, else nothing (and no error; no PL/pgSQL
    either, which would load a library into the session)."""
    lit = "'" + name.replace("'", "''") + "'"
    return ("SELECT pg_catalog.set_config(name, reset_val, false) FROM pg_catalog.pg_settings "
            f"WHERE name = {lit}")


class ServerClient(Protocol):
    """What a server connection calls back on whoever it serves: the client session, a
    fan-out's stream or collector, or the stand-in for a client that left. Implementers
    inherit no-op defaults for the events they do not care about."""

    def write(self, data: bytes) -> None: ...

    def server_idle(self, server: ServerConnection) -> None:
        """Every request answered, at a ReadyForQuery."""

    def server_drained(self, server: ServerConnection) -> None:
        """Every request answered, but the unit not over (it ended with a Flush)."""

    def server_lost(self, server: ServerConnection, reason: str) -> None:
        """The connection died."""

    def server_error(self, body: bytes) -> None:
        """An ErrorResponse (its body) went by, in reply to a request."""

    def parse_failed(self, client_name: str | None) -> None:
        """A Parse of the client's was refused or skipped: its name is gone."""

    def server_param(self, server: ServerConnection, name: str, value: str) -> None:
        """A ParameterStatus: the server's value of a reported setting changed."""


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
        self.sql_names: dict[str, str] = {}   # SQL PREPAREs made here: name -> PREPARE text
        self.unnamed_owner: object | None = None
        self.vars: dict[str, str] = {}    # session settings applied beyond startup
        self.synced: tuple | None = None  # (client, vars generation) last replayed here
        self.wbuf: list[bytes] = []
        self.created = time.monotonic()
        self.last_used = self.created
        self.dirty = False                # in an unknown state: never reuse
        self.sticky: str | None = None    # holds client state the proxy cannot replay
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
        if state == CLOSED:
            self.pool.server_closed(self)

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
    def skipping(self) -> bool:
        """An extended-protocol request failed here: the server ignores every message up to
        the next Sync (a Query too), and answers none of them."""
        return self.replies.skipping

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

    # ------------------------------------------------------------ requests with state
    # What this server holds (prepared statements, the unnamed statement, settings) changes
    # only through these methods.

    def query(self, sql: str, swallow: bool = False, held: bytes | None = None) -> None:
        """Send a simple Query (a Query also destroys the unnamed statement)."""
        self.send(m.query(sql))
        self.push(X_QUERY, swallow=swallow, fake=held)
        self.unnamed_owner = None

    def parse(self, st, raw: bytes, client_name: str | None) -> None:
        """The client's own Parse of st: sent (or, for a statement this server already has
        under its global name, answered here), its reply passed on."""
        if not st.global_name:
            self.send(raw)
            self.push(X_PARSE, fake=(st, client_name))
            self.unnamed_owner = st
        elif st.global_name in self.prepared:
            self.push(X_FAKE, fake=m.PARSE_COMPLETE)
        else:
            self.send(st.parse_msg)
            self.prepared.add(st.global_name)
            self.push(X_PARSE, fake=(st, client_name))

    def ensure_prepared(self, st) -> None:
        """Parse st here first if this server lacks it; the reply is swallowed."""
        if st.global_name:
            if st.global_name not in self.prepared:
                self.send(st.parse_msg)
                self.prepared.add(st.global_name)
                self.push(X_PARSE, swallow=True, fake=(st, None))
        elif self.unnamed_owner is not st:
            self.send(st.parse_msg)
            self.push(X_PARSE, swallow=True, fake=(st, None))
            self.unnamed_owner = st

    def apply_settings(self, want: dict[str, str], owner) -> None:
        """Make this server's session settings `want` (SET/RESET what differs, one
        swallowed Query); owner is (client, generation), remembered to skip a repeat."""
        have = self.vars
        if have == want:   # the common case (both empty): nothing to send
            self.synced = owner
            return
        stmts = [f"SET {k} TO {v}" if type(v) is str else v.replay(k)
                 for k, v in want.items() if have.get(k) != v]
        stmts += [f"RESET {k}" if have[k] != UNSURE else _reset_if_known(k)
                  for k in have if k not in want]
        if stmts:
            self.query("; ".join(stmts), swallow=True)
            self.vars = dict(want)
        self.synced = owner

    def note_setting(self, name: str, value: str | None) -> None:
        """A SET (value) or RESET (None) the client ran here; "all" resets every one."""
        if value is not None:
            self.vars[name] = value
        elif name == "all":
            self.vars = {}
        else:
            self.vars.pop(name, None)

    def settings_unsure(self, names) -> None:
        """What this server holds of these settings is not known: the next client's
        replay sets or resets each of them."""
        for name in names:
            self.vars[name] = UNSURE   # no client's value: never taken as equal

    def restore_settings(self, vars_: dict[str, str]) -> None:
        """The settings this server had before a transaction that is now rolled back."""
        self.vars = vars_

    def pin(self, reason: str) -> None:
        """This server holds state of its client the proxy cannot replay (or must not be
        reused): never released to another client; the pool closes it."""
        self.sticky = reason

    def note_sql_prepare(self, name: str, text: str) -> None:
        """An SQL PREPARE made here (text: the whole PREPARE statement)."""
        self.sql_names[name] = text

    def forget_sql_prepare(self, name: str | None) -> None:
        """DEALLOCATE name (None: ALL) ran here."""
        if name is None:
            self.sql_names.clear()
        else:
            self.sql_names.pop(name, None)

    def forget_session(self) -> None:
        """After DISCARD ALL: no statement, no setting is left here."""
        self.sticky = None
        self.prepared.clear()
        self.sql_names.clear()
        self.vars = {}
        self.unnamed_owner = None

    def forget_unnamed(self) -> None:
        """The unnamed statement was replaced (by a Query or another client's Parse)."""
        self.unnamed_owner = None

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def mark_idle(self) -> None:
        self._set_state(IDLE)

    def mark_closed(self) -> None:
        if self.state != CLOSED:
            self._set_state(CLOSED)

    def push(self, kind: int, swallow: bool = False, fake=None, bare: bool = False) -> None:
        """Record that a reply to one request is due, in order (see ReplyMatcher.push)."""
        now = self.replies.push(kind, swallow, fake, bare)
        if now is not None:
            self.client.write(now)

    def _relay(self) -> None:
        frames, data = self.buf.scan()
        if frames:
            self._match(frames, data)

    def _match(self, frames, data) -> None:
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
            rest = replies.rest
            if not rest:
                client.server_idle(self)
                return
            # Frames after the unit's ReadyForQuery: a dying server's FATAL, say. They are
            # the client's only if it keeps the server (session pooling, an open
            # transaction); a client that lets go of it never sees them, and a dead server
            # is not handed to anyone.
            tail = frames[rest:]
            self._note_dying(tail, data)
            client.server_idle(self)
            self._match(tail, data)
        elif state == DRAINED:   # every reply is in, but the unit is not over (a Flush)
            client.server_drained(self)

    def _note_dying(self, frames, data) -> None:
        """A FATAL among frames nobody asked for: this server is going away."""
        for t, s, e in frames:
            if t == 0x45:
                f = m.decode_fields(data[s + 5:e])
                if f.get("V", f.get("S")) in ("FATAL", "PANIC"):
                    self.dirty = True

    def _handle(self, events: list, client) -> None:
        """What the matcher saw besides bytes to forward: settings, errors, failed Parses."""
        for ev in events:
            what = ev[0]
            if what == "param":
                self.server_params[ev[1]] = ev[2]
                tell = getattr(client, "server_param", None)
                if tell is not None:
                    tell(self, ev[1], ev[2])
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

    async def cancel(self) -> None:
        """A CancelRequest for what this server runs now (over a connection of its own)."""
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 5)
            w.write(m.cancel_request(self.pid, self.secret))
            await w.drain()
            w.close()
        except (OSError, TimeoutError) as exc:
            log.warning("cancel request to %s:%s failed: %s", self.host, self.port, exc)

    def abort(self, reason: str) -> None:
        self.closed_reason = reason
        self.dirty = True
        if self.transport is not None:
            self.transport.abort()

    def terminate(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(m.TERMINATE)
            self.transport.close()
