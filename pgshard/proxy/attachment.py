"""Which server a client session runs on: attaching one of a shard's pool (or one the client
parked), opening the held-back BEGIN on it, letting it go at an idle point, keeping servers
that hold state of the client parked, and giving every server back clean when it leaves."""

from __future__ import annotations

import asyncio

from pgshard.protocol import messages as m
from pgshard.protocol.errors import ConnectionFailure, PgError
from pgshard.proxy.backend import X_SYNC, ServerClient
from pgshard.sql import classify as r
from pgshard.sql.sql_prepare import execute_call, prepared_statement

ORPHAN_TIMEOUT = 10.0   # seconds a server left by its client may take to reach an idle point


class Orphan(ServerClient):
    """Stands in for a client that left while its server finishes a rollback."""

    def __init__(self, pool):
        self.pool = pool
        self.failed = False

    def write(self, data):
        pass

    def server_error(self, body: bytes) -> None:
        self.failed = True   # the rollback or reset did not happen: never reuse the server

    def server_idle(self, server):
        if self.failed:
            server.pin("its reset after the client left failed")
        self.pool.release(server)   # closes it when sticky


class ServerAttachment:
    """The server side of one ClientSession (held as `session.att`): attach_now/attach link
    a server of (shard, role) to the session (session.server, .shard, .role stay the
    session's, read everywhere), detach lets it go, and `parked` keeps the servers that hold
    state of the client the proxy cannot replay (sql.sticky) while it runs elsewhere:
    (shard, role) -> server. The session's `parked` is this same dict, never replaced."""

    __slots__ = ("session", "proxy", "txn", "parked", "idle_waiter", "last")

    def __init__(self, session):
        self.session = session
        self.proxy = session.proxy
        self.txn = session.txn
        self.parked: dict[tuple[str, str], object] = {}
        self.idle_waiter: asyncio.Future | None = None   # woken by the server's idle point
        # The server this client gave back last: it gets it again when that one is idle
        # (BackendPool.try_acquire), so its backend-local state stays the client's own.
        self.last = None

    def attach_now(self, shard: str, begin: bool = True, role: str = "primary"):
        """The server for shard if it can be had without waiting, else None. With
        begin=False a held-back BEGIN stays held back (the unit only looks, e.g. a Parse
        or Describe, so it must not pin the transaction to this shard)."""
        session = self.session
        s = session.server
        if s is not None:
            if session.shard != shard or session.role != role:
                return None
            if not session.settings.synced(s):
                session.settings.sync(s)
            if begin and self.txn.pending is not None:
                self.send_begin(s)
            return s
        if session.closed:
            return None
        s = self.take_parked(shard, role) if self.parked else None
        if s is None:
            s = self.proxy.pool_for(shard, session.user, role,
                                    database=session.database).try_acquire(self.last)
        if s is None:
            return None
        self.link(s, shard, begin)
        session.role = role
        return s

    def link(self, s, shard: str, begin: bool = True) -> None:
        session = self.session
        s.link(session)
        session.server = s
        session.shard = shard
        session.settings.sync(s)
        if self.txn.pending is not None and begin:
            self.send_begin(s)

    def send_begin(self, s) -> None:
        """Open the held-back transaction on s, ahead of the statement that runs in it,
        whichever message first attached s (a flushed Parse/Describe only looks)."""
        txn = self.txn
        if s.unsynced:
            # End the look-only unit first: a Query inside it would be part of it.
            s.send(m.SYNC)
            s.push(X_SYNC, swallow=True)
        s.query(txn.pending, swallow=True)
        txn.begun = txn.pending
        snap = txn.snapshot
        if snap is not None and snap[2] is None:
            # SETs held back with the BEGIN run inside it: ROLLBACK undoes them here too.
            txn.snapshot = (snap[0], dict(s.vars), s)
            s.restore_settings(dict(self.session.settings.vars))
        txn.opened()

    async def attach(self, shard: str, begin: bool = True, role: str = "primary"):
        """The server this client's next request goes to, acquiring one if needed."""
        session = self.session
        while session.server is not None and (session.shard != shard or session.role != role):
            s = session.server
            if s.expect:
                await self.wait_idle_point()
                continue
            if s.unsynced == 2:
                raise r.CrossShardTransaction(
                    f"statement routes to shard {shard} but this pipeline already runs on "
                    f"shard {session.shard}",
                    hint="send a Sync between statements for different shards")
            if s.txn_status != b"I":
                raise r.CrossShardTransaction(
                    f"this transaction runs on shard {session.shard}; a statement for shard "
                    f"{shard} cannot join it (cross-shard transactions are not supported yet)",
                    hint="commit first, or keep a transaction's statements on one shard key")
            self.detach()
        if session.closed:
            raise ConnectionError("client gone")
        s = session.server
        if s is None and self.parked:
            s = self.take_parked(shard, role)
            if s is not None:
                self.link(s, shard, begin)
                session.role = role
                return s
        if s is None:
            pool = self.proxy.pool_for(shard, session.user, role, database=session.database)
            s = pool.try_acquire(self.last)
            if s is None:
                try:
                    s = await pool.acquire()
                except PgError as exc:
                    if role == "primary" and isinstance(exc, ConnectionFailure):
                        other = session.targeting.other_shard(shard)
                        if other is not None:   # the statement needs no particular shard
                            return await self.attach(other, begin, role)
                    if role == "primary" or self.proxy.replicas is None:
                        raise
                    # A replica that cannot be reached is banned; the primary serves.
                    self.proxy.replicas.ban(shard, int(role.split(":")[1]), exc.message)
                    return await self.attach(shard, begin, "primary")
                if session.closed:
                    pool.release(s)
                    raise ConnectionError("client gone")
            self.link(s, shard, begin)
            session.role = role
        else:
            if not session.settings.synced(s):
                session.settings.sync(s)
            if begin and self.txn.pending is not None:
                self.send_begin(s)
        return s

    async def wait_idle_point(self) -> None:
        """Until the attached server answered all it owes (or left, or the client did)."""
        self.idle_waiter = asyncio.get_running_loop().create_future()
        await self.idle_waiter
        self.idle_waiter = None
        if self.session.closed:
            raise ConnectionError("client gone")

    def wake(self) -> None:
        """The server reached an idle point (or was lost): wait_idle_point returns."""
        w = self.idle_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def detach(self) -> None:
        """Let go of the attached server: parked if it holds state of the client, else
        back to its pool (a look-only unit on it ended first)."""
        session = self.session
        s = session.server
        shard = session.shard
        session.server = None
        session.shard = None
        session.local_key = None
        if s is not None:
            if s.sticky and s.usable and not session.closed:
                self.parked[(shard, session.role)] = s   # keeps this client's state: kept
            elif s.unsynced and s.usable and not s.expect:
                end_unit_then_release(s)
            else:
                self.last = s
                s.pool.release(s)

    def give_back(self, s) -> None:
        """The client left: return a server of its to the pool, clean."""
        session = self.session
        pool_mode = session.pool_mode
        if pool_mode == "session" and self.proxy.config.proxy.session_server_reset == "close":
            s.pin("its session ended (session_server_reset = close)")
            s.pool.release(s)   # closed: the next client gets a new backend
            return
        if s.usable and not s.expect and s.unsynced != 2:
            if s.txn_status == b"I" and pool_mode == "transaction" and not s.unsynced \
                    and not s.sticky:
                s.pool.release(s)
            else:
                # Never hand a dirty server to another client: end its unit, roll back
                # (and, in session mode or holding state of this client, reset) first.
                sql = ("ROLLBACK",) if s.txn_status != b"I" else ()
                if pool_mode == "session" or s.sticky:
                    sql += ("DISCARD ALL",)
                    s.forget_session()
                end_unit_then_release(s, sql)
        else:
            # A request in flight, or a Bind/Execute not yet ended by a Sync: a Sync would
            # commit what the client never finished. Close the server instead.
            s.abort("client disconnected in the middle of a request")

    def give_back_all(self) -> None:
        """The client left: its server, the parked ones and a multi-shard transaction's
        (rolled back; a prepared one is left to recovery) go back."""
        session = self.session
        s = session.server
        session.server = None
        if s is not None:
            self.give_back(s)
        for s in self.parked.values():
            self.give_back(s)
        self.parked.clear()
        multi = self.txn.multi
        if multi is not None:
            self.txn.multi = None
            for _, s in multi.servers.values():
                self.give_back(s)
            multi.servers = {}

    # ------------------------------------------------------------ state pinned to a server

    def pin(self, s, plan: r.Plan, sql: str | None = None) -> None:
        """plan leaves state on s the proxy cannot replay: s stays this client's. An SQL
        PREPARE is remembered, to be made again on another shard an EXECUTE goes to."""
        s.pin(plan.sticky)
        if plan.first_word == "PREPARE" and plan.name:
            got = prepared_statement(sql) if sql is not None else None
            name = got[0] if got else plan.name
            self.session.sql_prepared[name] = sql or ""
            s.note_sql_prepare(name, sql or "")
        elif plan.first_word == "LOAD" and sql:
            self.session.settings.loaded(s, sql)

    def replay_sql_prepare(self, s, sql: str) -> None:
        """Before an EXECUTE on s: the PREPARE it names, if s does not have it (the EXECUTE
        was routed to another shard than the PREPARE ran on)."""
        call = execute_call(sql)
        text = self.session.sql_prepared.get(call[0]) if call is not None else None
        if not text or s.sql_names.get(call[0]) == text:
            return
        name = call[0]
        if name in s.sql_names:   # an older definition under that name
            s.query('DEALLOCATE "' + name.replace('"', '""') + '"', swallow=True)
        s.query(text, swallow=True)
        s.note_sql_prepare(name, text)
        if not s.sticky:
            s.pin("SQL PREPARE")

    def take_parked(self, shard: str, role: str):
        s = self.parked.pop((shard, role), None)
        if s is not None and not s.usable:
            s.pool.release(s)   # closes it
            raise ConnectionFailure(
                f"lost the server connection of shard {shard} that held this session's "
                "state (temporary tables, advisory locks, SQL prepared statements, …)")
        return s

    def keep_parked(self, shard: str, s) -> None:
        s.link(self.session)
        self.parked[(shard, "primary")] = s

    def discard_parked(self) -> None:
        """DISCARD ALL: the servers put aside are reset and go back to the pool."""
        for s in self.parked.values():
            s.forget_session()
            end_unit_then_release(s, ("DISCARD ALL",))
        self.parked.clear()


def end_unit_then_release(s, sql: tuple[str, ...] = ()) -> None:
    """Give s back to the pool once it is idle with nothing outstanding: end a pending
    extended-protocol unit with a Sync (only look-only units reach here, or a client
    that is gone, whose Bind/Execute must not be committed: see give_back), then run
    sql (ROLLBACK / DISCARD ALL) if given; replies go nowhere."""
    orphan = s.client = Orphan(s.pool)
    if s.unsynced:
        s.send(m.SYNC)
        s.push(X_SYNC, swallow=True)
    for one in sql or ():   # separately: DISCARD ALL refuses to run in a multi-statement string
        s.query(one, swallow=True)
    s.flush()

    def check() -> None:   # never let a server that does not come back hold a pool slot
        if s.client is orphan and s.usable:
            s.abort("did not come back to an idle point after its client left")
    asyncio.get_running_loop().call_later(ORPHAN_TIMEOUT, check)
