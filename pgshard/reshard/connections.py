"""Connections to the shard primaries a resharding job works on: one per shard and logical
database for the length of one drive, opened on first use (a shard that does not answer is
a transient ConnectionError, retried by the runner)."""

from __future__ import annotations

import asyncio

import asyncpg

from pgshard.ring.catalog import Catalog

CONNECT_TIMEOUT = 5.0
# The job's statements are large (a condition per range) and each runs once: compiling them
# (JIT) took longer than running them (a cleanup batch: 18 ms of JIT for 29 ms of deleting).
SETTINGS = {"jit": "off"}


class Connections:
    """One connection per shard primary and database for the length of a drive, opened on
    first use (database None: the one the shard's DSN names; else a [[databases]] dbname)."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self._conns: dict[tuple[str, str | None], asyncpg.Connection] = {}

    async def get(self, shard: str, database: str | None = None) -> asyncpg.Connection:
        conn = self._conns.get((shard, database))
        if conn is not None and not conn.is_closed():
            return conn
        dsn = self.catalog.shard(shard).primary
        extra = {"database": database} if database is not None else {}
        try:
            conn = await asyncio.wait_for(asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT,
                                                          server_settings=SETTINGS, **extra),
                                          CONNECT_TIMEOUT + 1)
        except asyncpg.InvalidCatalogNameError:
            raise LookupError(f'database "{database}" does not exist on shard {shard}') \
                from None
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise ConnectionError(f"shard {shard} does not answer: {exc}") from None
        self._conns[(shard, database)] = conn
        return conn

    async def has_database(self, shard: str, database: str | None) -> bool:
        if database is None:
            return True
        return bool(await (await self.get(shard)).fetchval(
            "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", database))

    def reset(self) -> None:
        for conn in self._conns.values():
            conn.terminate()
        self._conns.clear()

    async def __aenter__(self) -> Connections:
        return self

    async def __aexit__(self, *exc) -> None:
        for conn in self._conns.values():
            try:
                await asyncio.wait_for(conn.close(), 2)
            except Exception:
                conn.terminate()
        self._conns.clear()
