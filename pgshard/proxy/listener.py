"""The data plane's top object: listens for clients (admitting each socket against the
client limits at accept), owns the pools, the catalog snapshot and the registry of sessions
that cancel requests are matched against.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import socket

from pgshard.config import Config, UserConfig, parse_dsn
from pgshard.protocol import messages as m
from pgshard.protocol.errors import InvalidCatalogName, PgError
from pgshard.proxy.client import ClientSession
from pgshard.proxy.limits import ADMIT, REFUSE, ClientLimits
from pgshard.proxy.pool import BackendPool, PoolKey, PoolSettings
from pgshard.proxy.statements import StatementCache
from pgshard.ring.catalog import Catalog
from pgshard.sql import classify
from pgshard.tls import server_context
from pgshard.worker_link import new_pid, worker_of

log = logging.getLogger("pgshard.proxy")

# Sockets accepted per readiness callback: a flood must not starve the sidecar or servers.
ACCEPT_BATCH = 64
# accept() failing for lack of resources (should not happen inside the fd budget): retry after.
ACCEPT_PAUSE = 0.1
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Proxy:
    """The proxy of one process: the listening socket, its client sessions, the server pools
    per (shard, role, user, database), the catalog it routes by and the shared caches."""

    def __init__(self, config: Config, catalog: Catalog | None = None):
        self.config = config
        self.catalog: Catalog | None = catalog or config.catalog
        pc = config.proxy
        self.settings = PoolSettings.of(pc)
        classify.configure_cache(pc.plan_cache_bytes)
        self.pools: dict[PoolKey, BackendPool] = {}
        self.statements = StatementCache(pc.statement_cache_bytes)
        self.clients: dict[int, ClientSession] = {}
        self.ssl_context = server_context(pc.tls_cert, pc.tls_key) if pc.tls_cert else None
        self.closing = False
        self.limits = ClientLimits(self)
        self._listeners: list[socket.socket] = []
        self._handoffs: set[asyncio.Task] = set()
        self._janitor: asyncio.Task | None = None
        self._server_params: dict[str, str] | None = None
        self._pool_cache: tuple[Catalog | None, dict] = (None, {})
        # Key column ordinals of sharded tables (INSERT without a column list), learned
        # from the shards and forgotten after any DDL.
        self.key_positions: dict[str, int] = {}
        self.key_positions_key: tuple[tuple[str, int], ...] = ()
        self._other_key_positions: dict[str, tuple[dict[str, int], tuple]] = {}
        self.replicas = None  # ReplicaMonitor, when any shard has replicas
        from pgshard.proxy.failover_hold import FailoverHold
        self.failover_hold = FailoverHold(self, config.ha.failover_hold)
        self.metrics = None  # set by the sidecar when it runs (pgshard.control.metrics)
        self.twophase = None  # proxy.twophase.Coordinator when two_phase_commit is on
        self.reload = None    # () -> (applied, restart): re-read the config (set by the runtime)
        from pgshard.proxy.slowlog import SlowLog
        self.slowlog = SlowLog(self)   # sessions report each answered statement's duration
        # serve --workers N (pgshard.workers): this process's index, the count, and its
        # WorkerLink to the others (cancel requests for their sessions go there).
        self.worker_index = 0
        self.workers = 1
        self.link = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        pc = self.config.proxy
        self._listeners = await _bind(pc.host, pc.port, reuse_port=self.workers > 1)
        self.limits.start()
        from pgshard.proxy.deadlock import DeadlockDetector
        self.deadlocks = DeadlockDetector(self)
        self.deadlocks.start()
        for sock in self._listeners:
            loop.add_reader(sock.fileno(), self._on_acceptable, sock)
        self._janitor = loop.create_task(self._maintain())
        if any(sh.replicas for sh in (self.catalog.shards if self.catalog else ())):
            from pgshard.proxy.replicas import ReplicaMonitor
            self.replicas = ReplicaMonitor(lambda: self.catalog,
                                           max_lag=self.config.proxy.max_replica_lag,
                                           interval=self.config.ha.check_interval)
            await self.replicas.start()
        log.info("pgshard listening on %s:%s", pc.host, self.port)

    @property
    def port(self) -> int:
        if self._listeners:
            return self._listeners[0].getsockname()[1]
        return self.config.proxy.port

    async def stop(self) -> None:
        self.closing = True
        self._stop_listening()
        await self.limits.stop()
        if getattr(self, "deadlocks", None) is not None:
            await self.deadlocks.stop()
        if self._janitor is not None:
            self._janitor.cancel()
        if self.replicas is not None:
            await self.replicas.stop()
        for c in {*self.clients.values(), *self.limits.sessions()}:
            if c.transport is not None:
                c.write(b"")
                c.transport.close()
        for p in self.pools.values():
            p.close()
        await asyncio.sleep(0)

    def _stop_listening(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners = []

    # ------------------------------------------------------------ accepting clients

    def _on_acceptable(self, sock: socket.socket) -> None:
        """Accept what is queued (a batch at a time), admitting each socket against
        max_client_conn and the fd budget before any byte is read from it."""
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    self.limits.accept_failed(exc)
                    self._pause_accepting(sock)
                elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    log.warning("accept() failed: %s", exc)
                return
            conn.setblocking(False)
            if self.closing:
                conn.close()
                continue
            what, refusal = self.limits.admit()
            if what == ADMIT or what == REFUSE:
                self._hand_off(conn, refusal)
            else:
                _refuse_now(conn, refusal)

    def _pause_accepting(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())

        def resume():
            if sock in self._listeners:
                loop.add_reader(sock.fileno(), self._on_acceptable, sock)
        loop.call_later(ACCEPT_PAUSE, resume)

    def _hand_off(self, conn: socket.socket, refusal: PgError | None) -> None:
        """Give an accepted socket a session; a refused one answers its startup packet
        with the refusal (drivers trust no error sent before that)."""
        session = ClientSession(self)
        session.refusal = refusal
        self.limits.track(session, refusing=refusal is not None)
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(lambda: session, conn))
        self._handoffs.add(task)

        def done(t: asyncio.Task) -> None:
            self._handoffs.discard(t)
            if t.cancelled() or t.exception() is not None:
                self.limits.release(session)
                conn.close()
        task.add_done_callback(done)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for pool in list(self.pools.values()):
                try:
                    await pool.maintain()
                except Exception:
                    log.exception("pool maintenance failed for %s", pool.key)

    def set_catalog(self, catalog: Catalog) -> None:
        """Swap the snapshot by reference; sessions read it per statement. Pools of a shard
        the new catalog no longer has are closed (their busy servers close when released)."""
        old, self.catalog = self.catalog, catalog
        self.forget_key_positions()
        # Pools to a moved primary or replica are closed; waiting statements follow it.
        self.failover_hold.catalog_changed(old, catalog)
        names = set(catalog.shard_names())
        for key, pool in list(self.pools.items()):
            if key.shard not in names:
                pool.close()
                del self.pools[key]

    def key_positions_of(self, database: str | None) -> tuple[dict[str, int], tuple]:
        """(table -> key ordinal, its hashable form) learned in a logical database (None or
        [proxy] database: the main one): each database's tables have their own columns."""
        if database is None or database == self.config.proxy.database:
            return self.key_positions, self.key_positions_key
        return self._other_key_positions.get(database, ({}, ()))

    def set_key_position(self, table: str, position: int, database: str | None = None) -> None:
        if database is None or database == self.config.proxy.database:
            self.key_positions[table] = position
            self.key_positions_key = tuple(sorted(self.key_positions.items()))
            return
        known = dict(self.key_positions_of(database)[0])
        known[table] = position
        self._other_key_positions[database] = (known, tuple(sorted(known.items())))

    def forget_key_positions(self) -> None:
        """Forget them in every database (after DDL, which may have changed any)."""
        self.key_positions = {}
        self.key_positions_key = ()
        self._other_key_positions = {}

    # ------------------------------------------------------------ pools

    def pool_for(self, shard: str, user: UserConfig | None, role: str = "primary",
                 database: str | None = None) -> BackendPool:
        """The pool serving (shard, role) for this user in a logical database (None or
        [proxy] database: the main one, on the shard DSN's database; else a [[databases]]
        name); cached per catalog snapshot."""
        if database == self.config.proxy.database:
            database = None
        ck = (shard, role, user.name if user else None, database)
        cache = self._pool_cache
        if cache[0] is self.catalog:
            pool = cache[1].get(ck)
            if pool is not None and not pool.closed:
                return pool
        else:
            self._pool_cache = cache = (self.catalog, {})
        pool = self._pool_for(shard, user, role, database)
        cache[1][ck] = pool
        return pool

    def _pool_for(self, shard: str, user: UserConfig | None, role: str,
                  database: str | None = None) -> BackendPool:
        cat = self.catalog
        sh = cat.shard(shard)
        dsn = parse_dsn(sh.primary if role == "primary" else sh.replicas[int(role.split(":")[1])])
        db = None
        if database is not None:
            db = self.config.database(database)
            if db is None:   # dropped from the config by a reload
                raise InvalidCatalogName(f'database "{database}" does not exist')
            if db.server_database == dsn.database:
                raise InvalidCatalogName(
                    f'database "{database}" is configured on dbname "{db.server_database}", '
                    f"which shard {shard}'s DSN names for the main database",
                    hint="give the [[databases]] entry a dbname of its own")
        server_user = (user.server_user if user and user.server_user else dsn.user)
        password = (user.server_password if user and user.server_password else dsn.password)
        key = PoolKey(shard, role, server_user, db.server_database if db else dsn.database,
                      user.name if user and user.pool_size else None)
        pool = self.pools.get(key)
        if pool is None or (pool.host, pool.port) != (dsn.host, dsn.port):
            if pool is not None:
                pool.close()
            pool = BackendPool(key, dsn.host, dsn.port, password, self.settings.serving(user, db))
            self.failover_hold.adopt(pool, sh)
            self.pools[key] = pool
        return pool

    def database_of(self, key: PoolKey) -> str:
        """The logical database a pool serves (its [[databases]] name, else [proxy]'s)."""
        for d in self.config.databases:
            if d.server_database == key.database:
                return d.name
        return self.config.proxy.database

    async def server_params(self, user: UserConfig | None,
                            database: str | None = None) -> dict[str, str]:
        """ParameterStatus values to greet clients with, learned from a real server. A
        logical database's first login also connects to it (on the first shard), so one
        missing there is refused at login, as PostgreSQL does."""
        if database is not None and database != self.config.proxy.database:
            await self._check_database(user, database)
        if self._server_params is not None:
            return self._server_params
        last: PgError | None = None
        for sh in self.catalog.shards:
            pool = self.pool_for(sh.name, user)
            if pool.server_params is None:
                try:
                    s = await pool.acquire()
                except PgError as exc:
                    last = exc
                    continue
                pool.release(s)
            self._server_params = {k: v for k, v in pool.server_params.items()
                                   if k not in ("is_superuser", "session_authorization")}
            return self._server_params
        raise PgError(f"no shard is reachable: {last.message if last else 'no shards'}",
                      sqlstate="08006", severity="FATAL")

    async def _check_database(self, user: UserConfig | None, database: str) -> None:
        sh = self.catalog.shards[0]
        pool = self.pool_for(sh.name, user, database=database)
        if pool.server_params is None:
            pool.release(await pool.acquire())

    # ------------------------------------------------------------ sessions

    def register(self, client: ClientSession) -> tuple[int, int]:
        while True:
            if self.workers == 1:
                pid = secrets.randbits(31) or 1
            else:   # the worker index is pid % workers: a cancel finds its way back here
                pid = new_pid(self.worker_index, self.workers)
            if pid not in self.clients:
                break
        self.clients[pid] = client
        return pid, secrets.randbits(31)

    def unregister(self, client: ClientSession) -> None:
        if self.clients.get(client.pid) is client:
            del self.clients[client.pid]

    async def cancel(self, pid: int, secret: int, forwarded: bool = False) -> None:
        """A CancelRequest: the session's running statement is cancelled when the key
        matches; with several workers, one for another worker's session is handed to it."""
        if self.workers > 1:
            owner = worker_of(pid, self.workers)
            if self.metrics is not None and not forwarded:   # counted where it came in
                self.metrics.cancel_request("local" if owner == self.worker_index
                                            else "forwarded")
            if owner != self.worker_index:
                if not forwarded and self.link is not None:
                    await self.link.forward_cancel(owner, pid, secret)
                return
        c = self.clients.get(pid)
        if c is None or not secrets.compare_digest(c.secret.to_bytes(4, "big"),
                                                    secret.to_bytes(4, "big", signed=True)
                                                    if secret < 0 else secret.to_bytes(4, "big")):
            return
        await c.cancel_running()

    # ------------------------------------------------------------ metrics hooks

    def metrics_client_connected(self, client) -> None:
        if self.metrics:
            self.metrics.client_connected(client)

    def metrics_client_disconnected(self, client) -> None:
        if self.metrics:
            self.metrics.client_disconnected(client)

    def metrics_error(self, sqlstate: str) -> None:
        if self.metrics:
            self.metrics.error(sqlstate)


async def _bind(host: str, port: int, reuse_port: bool = False) -> list[socket.socket]:
    """Non-blocking listening sockets for every address host resolves to (reuse_port: with
    SO_REUSEPORT, the kernel spreading connections over every worker's socket)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen = set()
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(1024)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def _refuse_now(conn: socket.socket, refusal: PgError) -> None:
    """Answer an over-limit socket without keeping it: the error, then close, at once."""
    try:
        conn.send(m.error_from(refusal))
    except OSError:
        pass
    conn.close()
