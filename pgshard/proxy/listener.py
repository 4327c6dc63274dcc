"""The data plane's top object: listens for clients (admitting each socket against the
client limits at accept) and holds the catalog snapshot, the pool registry, the session
registry and the shared caches.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

from pgshard.config import Config
from pgshard.protocol import messages as m
from pgshard.protocol.errors import PgError
from pgshard.proxy.client import ClientSession
from pgshard.proxy.limits import ADMIT, REFUSE, ClientLimits
from pgshard.proxy.pool import BackendPool, PoolKey, PoolSettings
from pgshard.proxy.pool_registry import PoolRegistry
from pgshard.proxy.sessions import SessionRegistry
from pgshard.proxy.statements import StatementCache
from pgshard.ring.catalog import Catalog
from pgshard.sql import classify
from pgshard.tls import server_context

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
        # The server pools (pool_registry.py) and the sessions cancel requests find
        # (sessions.py), each in a home of its own; the hot lookups are bound here.
        self.pool_registry = PoolRegistry(self)
        self.pools: dict[PoolKey, BackendPool] = self.pool_registry.pools
        self.pool_for = self.pool_registry.pool_for
        self.database_of = self.pool_registry.database_of
        self.server_params = self.pool_registry.server_params
        self.sessions = SessionRegistry(self)
        self.clients: dict[int, ClientSession] = self.sessions.clients
        self.register = self.sessions.register
        self.unregister = self.sessions.unregister
        self.cancel = self.sessions.cancel
        self.statements = StatementCache(pc.statement_cache_bytes)
        self.ssl_context = server_context(pc.tls_cert, pc.tls_key) if pc.tls_cert else None
        self.closing = False
        self.limits = ClientLimits(self)
        self._listeners: list[socket.socket] = []
        self._handoffs: set[asyncio.Task] = set()
        self._janitor: asyncio.Task | None = None
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
        self._janitor = loop.create_task(self.pool_registry.maintain())
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

    def set_catalog(self, catalog: Catalog) -> None:
        """Swap the snapshot by reference; sessions read it per statement. Pools of a shard
        the new catalog no longer has are closed (their busy servers close when released)."""
        old, self.catalog = self.catalog, catalog
        self.forget_key_positions()
        # Pools to a moved primary or replica are closed; waiting statements follow it.
        self.failover_hold.catalog_changed(old, catalog)
        self.pool_registry.drop_missing(set(catalog.shard_names()))

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
