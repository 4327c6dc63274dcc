"""Pools of server connections, one per (shard, role, server user, database)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass

from pgshard.protocol.errors import ConnectionFailure, PgError
from pgshard.proxy.backend import ACTIVE, IDLE, ServerConnection

log = logging.getLogger("pgshard.pool")


class _Expired(Exception):
    """A waiter's query_wait_timeout passed (set on its future by _expire)."""


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(_Expired())


class PoolTimeout(PgError, code="53000"):
    """No server connection became free within query_wait_timeout."""


@dataclass(frozen=True, slots=True)
class PoolKey:
    """Which pool a server connection belongs to."""

    shard: str
    role: str        # "primary" | "replica:<n>"
    user: str        # server user
    database: str
    # The client user a pool of its own serves (one with its own pool_size, as PgBouncer
    # pools per user); None: shared by every client user that logs in to the shards as `user`.
    client: str | None = None


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """What a pool needs of [proxy] (the defaults live there, in ProxyConfig)."""

    pool_size: int
    min_pool_size: int
    server_idle_timeout: float
    server_lifetime: float
    connect_timeout: float
    query_wait_timeout: float

    @classmethod
    def of(cls, proxy_config) -> PoolSettings:
        return cls(**{f: getattr(proxy_config, f) for f in cls.__dataclass_fields__})

    def serving(self, user, database) -> PoolSettings:
        """These ([proxy]'s) settings for a pool of a logical database ([[databases]] entry
        or None: the main one) and a user: the database's pool_size and min_pool_size over
        [proxy]'s, a user's own pool_size over both (PgBouncer's order)."""
        changes = {}
        if database is not None:
            if database.pool_size:
                changes["pool_size"] = database.pool_size
            if database.min_pool_size is not None:
                changes["min_pool_size"] = database.min_pool_size
        if user is not None and user.pool_size:
            changes["pool_size"] = user.pool_size
        if not changes:
            return self
        size = changes.get("pool_size", self.pool_size)
        changes["min_pool_size"] = min(changes.get("min_pool_size", self.min_pool_size), size)
        return dataclasses.replace(self, **changes)


class BackendPool:
    """Idle servers in a deque; waiters served first-come first-served."""

    def __init__(self, key: PoolKey, host: str, port: int, password: str,
                 settings: PoolSettings):
        self.key = key
        self.host = host
        self.port = port
        self.password = password
        self.settings = settings
        # No application_name: a client that sets none must see PostgreSQL's default ('').
        self.params = {"user": key.user, "database": key.database}
        self.idle: deque[ServerConnection] = deque()
        self.servers: set[ServerConnection] = set()
        self.connecting = 0
        self.waiters: deque[asyncio.Future] = deque()
        self.server_params: dict[str, str] | None = None
        self.closed = False
        self.failed_at = 0.0   # when a connect last failed (0: the last one worked)
        # pgshard.proxy.failover_hold: who holds acquisitions while the shard's primary is
        # down or changing, and whether the catalog holds this shard now (no server then).
        self.hold = None
        self.paused = False
        self.stats = {"acquired": 0, "waited": 0, "timeouts": 0, "connects": 0,
                      "connect_errors": 0}

    # ------------------------------------------------------------ accounting

    @property
    def size(self) -> int:
        return len(self.servers) + self.connecting

    def healthy(self, retry_after: float = 5.0) -> bool:
        """False while the last connect failed less than retry_after seconds ago."""
        return not self.failed_at or time.monotonic() - self.failed_at > retry_after

    @property
    def active(self) -> int:
        return sum(1 for s in self.servers if s.state == ACTIVE)

    def server_closed(self, server: ServerConnection) -> None:
        """A server of this pool closed (its connection calls this; no other state change
        of it concerns the pool): it is forgotten, and its place goes to a waiter."""
        self.servers.discard(server)
        try:
            self.idle.remove(server)
        except ValueError:
            pass
        if self.waiters and not self.closed:
            # Capacity freed: make a connection for the first waiter.
            asyncio.get_running_loop().create_task(self._connect_for_waiter())

    # ------------------------------------------------------------ acquire / release

    def try_acquire(self, prefer: ServerConnection | None = None) -> ServerConnection | None:
        """An idle usable server at once, or None (the caller then awaits acquire()).
        prefer: the server this client had last; when it is idle here the client gets it
        back (its backend's caches, loaded libraries and settings are the client's own
        already), else the most recently used one."""
        if self.paused:
            return None
        idle = self.idle
        if prefer is not None and prefer.usable and prefer in idle:
            idle.remove(prefer)
            self.stats["acquired"] += 1
            return prefer
        while idle:
            s = idle.pop()  # LIFO keeps a hot set of connections
            if s.usable:
                self.stats["acquired"] += 1
                return s
            s.abort("unusable idle server")
        return None

    async def acquire(self) -> ServerConnection:
        """A server, waiting for one if needed; a primary's pool waits out a failover (up
        to failover_hold) instead of failing while its primary is down."""
        s = self.try_acquire()
        if s is not None:
            return s
        if self.hold is not None and self.key.role == "primary":
            return await self.hold.acquire(self)
        return await self.acquire_direct()

    async def acquire_direct(self) -> ServerConnection:
        """A server from this pool (idle, newly connected or freed), without any hold."""
        s = self.try_acquire()
        if s is not None:
            return s
        if self.closed:
            raise ConnectionFailure(f"pool for shard {self.key.shard} is closed")
        if self.size < self.settings.pool_size:
            self.connecting += 1
            try:
                s = await self._connect()
            finally:
                self.connecting -= 1
            self.stats["acquired"] += 1
            return s
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.waiters.append(fut)
        self.stats["waited"] += 1
        # One timer that fails the future at the deadline, not asyncio.wait_for (a shield,
        # a second future and their callbacks: more work than the wait itself under load).
        # release() takes a served future off waiters; the others leave it here.
        timer = loop.call_later(self.settings.query_wait_timeout, _expire, fut)
        try:
            s = await fut
        except _Expired:
            self.stats["timeouts"] += 1
            self._forget_waiter(fut)
            raise PoolTimeout(
                f"no server connection to shard {self.key.shard} ({self.key.role}) became free "
                f"within query_wait_timeout ({self.settings.query_wait_timeout:g}s)",
                hint=f"pool_size is {self.settings.pool_size}; raise it or shorten transactions") from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())
            fut.cancel()
            self._forget_waiter(fut)
            raise
        except BaseException:   # the pool closed, or a connect for the waiters failed
            self._forget_waiter(fut)
            raise
        finally:
            timer.cancel()
        self.stats["acquired"] += 1
        return s

    def release(self, server: ServerConnection) -> None:
        """Return a server at an idle point; a dirty or expired one is closed instead."""
        server.unlink()
        now = time.monotonic()
        if (not server.usable or server.txn_status != b"I" or server.expect or server.unsynced
                or server.sticky or self.closed or now - server.created > self.settings.server_lifetime):
            server.terminate() if server.usable else server.abort("released while unusable")
            server.mark_closed()
            return
        server.mark_idle()
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(server)
                return
        self.idle.append(server)

    def _forget_waiter(self, fut: asyncio.Future) -> None:
        try:
            self.waiters.remove(fut)
        except ValueError:
            pass

    async def _connect_for_waiter(self) -> None:
        if self.size >= self.settings.pool_size or not self.waiters:
            return
        self.connecting += 1
        try:
            s = await self._connect()
        except PgError as exc:
            while self.waiters:
                fut = self.waiters.popleft()
                if not fut.done():
                    fut.set_exception(exc)
                    break
            return
        finally:
            self.connecting -= 1
        self.release(s)

    async def _connect(self) -> ServerConnection:
        loop = asyncio.get_running_loop()
        server = ServerConnection(self, self.host, self.port, dict(self.params))
        timeout = self.settings.connect_timeout
        self.stats["connects"] += 1
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: server, self.host, self.port), timeout)
            await server.startup(self.key.user, self.password, timeout)
        except PgError as exc:
            self.stats["connect_errors"] += 1
            # A database missing on the shard ([[databases]]) says nothing of its health.
            if exc.sqlstate != "3D000":
                self.failed_at = time.monotonic()
            server.abort("startup failed")
            raise
        except (OSError, TimeoutError) as exc:
            self.stats["connect_errors"] += 1
            self.failed_at = time.monotonic()
            server.abort("connect failed")
            raise ConnectionFailure(
                f"could not connect to shard {self.key.shard} ({self.key.role}) at "
                f"{self.host}:{self.port}: {exc or 'timeout'}") from None
        self.servers.add(server)
        self.failed_at = 0.0
        if self.server_params is None:
            self.server_params = dict(server.server_params)
        return server

    # ------------------------------------------------------------ upkeep

    async def maintain(self) -> None:
        """Close idle servers past their timeouts; keep min_pool_size open."""
        now = time.monotonic()
        st = self.settings
        keep = []
        for s in list(self.idle):
            expired = now - s.created > st.server_lifetime
            stale = now - s.last_used > st.server_idle_timeout
            if expired or (stale and len(self.servers) > st.min_pool_size) or not s.usable:
                self.idle.remove(s)
                s.terminate()
                s.mark_closed()
            else:
                keep.append(s)
        while self.size < st.min_pool_size and not self.closed:
            self.connecting += 1
            try:
                s = await self._connect()
            except PgError as exc:
                log.warning("pool %s: cannot open min_pool_size connection: %s",
                            self.key.shard, exc.message)
                break
            finally:
                self.connecting -= 1
            self.release(s)

    def close(self) -> None:
        self.closed = True
        for s in list(self.servers):
            if s.state == IDLE:
                s.terminate()
        for fut in self.waiters:
            if not fut.done():
                fut.set_exception(ConnectionFailure("pool closed"))
