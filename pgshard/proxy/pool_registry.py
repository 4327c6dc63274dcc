"""The server pools of one proxy process: one per (shard, role, server user, database[, client
user]), made on first use, looked up per statement through a cache of the catalog snapshot,
maintained every second and closed when their shard leaves the catalog."""

from __future__ import annotations

import asyncio
import logging

from pgshard.config import UserConfig, parse_dsn
from pgshard.protocol.errors import ConnectionFailure, InvalidCatalogName, PgError
from pgshard.proxy.pool import BackendPool, PoolKey

log = logging.getLogger("pgshard.proxy")


class PoolRegistry:
    """Every BackendPool of the proxy, and the ParameterStatus values clients are greeted
    with (learned from the first reachable server). It reads the proxy's current catalog,
    config and pool settings, which a catalog change or a reload replaces."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.pools: dict[PoolKey, BackendPool] = {}
        self._lookups: tuple[object, dict] = (None, {})   # (catalog, lookup key -> pool)
        self._greeting: dict[str, str] | None = None

    def pool_for(self, shard: str, user: UserConfig | None, role: str = "primary",
                 database: str | None = None) -> BackendPool:
        """The pool serving (shard, role) for this user in a logical database (None or
        [proxy] database: the main one, on the shard DSN's database; else a [[databases]]
        name); cached per catalog snapshot."""
        if database == self.proxy.config.proxy.database:
            database = None
        ck = (shard, role, user.name if user else None, database)
        cache = self._lookups
        if cache[0] is self.proxy.catalog:
            pool = cache[1].get(ck)
            if pool is not None and not pool.closed:
                return pool
        else:
            self._lookups = cache = (self.proxy.catalog, {})
        pool = self._make(shard, user, role, database)
        cache[1][ck] = pool
        return pool

    def forget_lookups(self) -> None:
        """Look every pool up again (users or databases changed by a reload)."""
        self._lookups = (None, {})

    def _make(self, shard: str, user: UserConfig | None, role: str,
              database: str | None = None) -> BackendPool:
        proxy = self.proxy
        sh = proxy.catalog.shard(shard)
        dsn = parse_dsn(sh.primary if role == "primary" else sh.replicas[int(role.split(":")[1])])
        db = None
        if database is not None:
            db = proxy.config.database(database)
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
            pool = BackendPool(key, dsn.host, dsn.port, password,
                               proxy.settings.serving(user, db))
            proxy.failover_hold.adopt(pool, sh)
            self.pools[key] = pool
        return pool

    def drop_missing(self, shards: set[str]) -> None:
        """Close the pools of shards a new catalog no longer has (their busy servers close
        when released)."""
        for key, pool in list(self.pools.items()):
            if key.shard not in shards:
                pool.close()
                del self.pools[key]

    def database_of(self, key: PoolKey) -> str:
        """The logical database a pool serves (its [[databases]] name, else [proxy]'s)."""
        config = self.proxy.config
        for d in config.databases:
            if d.server_database == key.database:
                return d.name
        return config.proxy.database

    async def server_params(self, user: UserConfig | None,
                            database: str | None = None) -> dict[str, str]:
        """ParameterStatus values to greet clients with, learned from a real server. A
        logical database's first login also connects to it (on the first shard), so one
        missing there is refused at login, as PostgreSQL does."""
        proxy = self.proxy
        if database is not None and database != proxy.config.proxy.database:
            await self._check_database(user, database)
        if self._greeting is not None:
            return self._greeting
        last: PgError | None = None
        for sh in proxy.catalog.shards:
            pool = self.pool_for(sh.name, user)
            if pool.server_params is None:
                try:
                    s = await pool.acquire()
                except PgError as exc:
                    last = exc
                    continue
                pool.release(s)
            self._greeting = {k: v for k, v in pool.server_params.items()
                              if k not in ("is_superuser", "session_authorization")}
            return self._greeting
        raise ConnectionFailure(f"no shard is reachable: {last.message if last else 'no shards'}",
                                severity="FATAL")

    async def _check_database(self, user: UserConfig | None, database: str) -> None:
        pool = self.pool_for(self.proxy.catalog.shards[0].name, user, database=database)
        if pool.server_params is None:
            pool.release(await pool.acquire())

    async def maintain(self) -> None:
        """Every second, each pool's upkeep (idle and lifetime limits, min_pool_size)."""
        while True:
            await asyncio.sleep(1.0)
            for pool in list(self.pools.values()):
                try:
                    await pool.maintain()
                except Exception:
                    log.exception("pool maintenance failed for %s", pool.key)
