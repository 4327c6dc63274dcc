"""The MetadataStore on PostgreSQL (asyncpg): tables in schema pgshard_meta, LISTEN/NOTIFY watches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from pgshard.store.base import (
    DEFAULT_TIMEOUT,
    KeySpace,
    KeyValue,
    Lease,
    LeaseExpired,
    MetadataStore,
    RevisionCompacted,
    StoreError,
    StoreUnavailable,
    WatchEvent,
    check_revision,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANNEL = "pgshard_meta_events"
SAFETY_POLL = 1.0
REAP_INTERVAL = 0.25
MAX_BACKOFF = 2.0
MAX_EVENTS = 10_000
WATCH_BATCH = 500
SCHEMA_LOCK = 0x7067_7368_6172_64  # advisory lock id: b"pgshard"

# Keys use COLLATE "C" so ranges and ORDER BY compare bytes, as in etcd and SQLite.
SCHEMA = """
CREATE SCHEMA IF NOT EXISTS pgshard_meta;
CREATE TABLE IF NOT EXISTS pgshard_meta.pgshard_kv (
    key text COLLATE "C" PRIMARY KEY, value bytea NOT NULL, revision bigint NOT NULL,
    create_revision bigint NOT NULL, lease_id bigint);
CREATE INDEX IF NOT EXISTS pgshard_kv_lease ON pgshard_meta.pgshard_kv (lease_id)
    WHERE lease_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS pgshard_meta.pgshard_events (
    revision bigint PRIMARY KEY, kind text NOT NULL, key text COLLATE "C" NOT NULL,
    value bytea NOT NULL);
CREATE SEQUENCE IF NOT EXISTS pgshard_meta.pgshard_lease_ids;
CREATE TABLE IF NOT EXISTS pgshard_meta.pgshard_leases (
    id bigint PRIMARY KEY DEFAULT nextval('pgshard_meta.pgshard_lease_ids'),
    ttl double precision NOT NULL, expires_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS pgshard_meta.pgshard_revision (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    revision bigint NOT NULL, compact_revision bigint NOT NULL);
INSERT INTO pgshard_meta.pgshard_revision VALUES (true, 0, 0) ON CONFLICT DO NOTHING;
"""

EXPIRED = ("SELECT id FROM pgshard_meta.pgshard_leases WHERE expires_at <= clock_timestamp() "
           "ORDER BY id")
ANY_EXPIRED = ("SELECT EXISTS (SELECT 1 FROM pgshard_meta.pgshard_leases "
               "WHERE expires_at <= clock_timestamp())")
KV_COLUMNS = "key, value, revision, create_revision"

UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
               asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError,
               asyncpg.TooManyConnectionsError, asyncpg.CrashShutdownError)


def _translate(e: BaseException) -> StoreError:
    if isinstance(e, UNAVAILABLE):
        return StoreUnavailable(f"postgresql metadata store unavailable: "
                                f"{e or type(e).__name__}")
    return StoreError(f"postgresql metadata store: {e}")


class _Write:
    """One write transaction: holds the revision row lock and hands out revisions."""

    def __init__(self, conn: asyncpg.Connection, revision: int, compact_revision: int):
        self.conn = conn
        self.revision = revision
        self.compact_revision = compact_revision
        self.start_revision = revision

    async def log(self, kind: str, full_key: str, value: bytes) -> int:
        self.revision += 1
        await self.conn.execute("INSERT INTO pgshard_meta.pgshard_events VALUES ($1, $2, $3, $4)",
                                self.revision, kind, full_key, value)
        return self.revision

    async def delete(self, full_key: str) -> int:
        await self.conn.execute("DELETE FROM pgshard_meta.pgshard_kv WHERE key = $1", full_key)
        return await self.log("delete", full_key, b"")

    async def drop_lease(self, lease_id: int) -> None:
        keys = await self.conn.fetch("SELECT key FROM pgshard_meta.pgshard_kv WHERE lease_id = $1 "
                                     "ORDER BY key", lease_id)
        for row in keys:
            await self.delete(row["key"])
        await self.conn.execute("DELETE FROM pgshard_meta.pgshard_leases WHERE id = $1", lease_id)


class PostgresStore(MetadataStore):
    """A connection pool for requests, and one dedicated LISTEN connection per watch.

    Strategy: every write transaction first locks the single pgshard_revision row, so writes
    are serialized and revisions are handed out in commit order; a watcher that reads the
    event log up to the revision in its snapshot can never miss a later-committing lower
    revision (which a plain sequence would allow). NOTIFY only says "look again".
    """

    def __init__(self, dsn: str, *, cluster: str, timeout: float = DEFAULT_TIMEOUT,
                 max_events: int = MAX_EVENTS):
        self.keys = KeySpace(cluster)
        self._dsn = dsn
        self._timeout = timeout
        self._max_events = max_events
        self._pool: asyncpg.Pool | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._watches: set[tuple[asyncpg.Connection, asyncio.Event]] = set()
        self._closed = False

    @classmethod
    async def open(cls, dsn: str, *, cluster: str = "default", timeout: float = DEFAULT_TIMEOUT,
                   max_events: int = MAX_EVENTS) -> PostgresStore:
        store = cls(dsn, cluster=cluster, timeout=timeout, max_events=max_events)
        try:
            store._pool = await asyncio.wait_for(asyncpg.create_pool(
                dsn, min_size=1, max_size=4, timeout=timeout, command_timeout=timeout),
                timeout + 1)
            await store._run(store._create_schema)
        except BaseException as e:
            await store.close()
            if isinstance(e, Exception) and not isinstance(e, StoreError):
                raise _translate(e) from e
            raise
        store._reaper = asyncio.create_task(store._reap_forever(), name="pgshard-pg-reaper")
        return store

    # -- plumbing ---------------------------------------------------------------------------

    @staticmethod
    async def _create_schema(conn: asyncpg.Connection) -> None:
        # Two stores starting at once would race on CREATE ... IF NOT EXISTS.
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            await conn.execute(SCHEMA)

    async def _run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        if self._closed or self._pool is None:
            raise StoreError("the store is closed")
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                return await fn(conn)
        except StoreError:
            raise
        except (asyncpg.PostgresError, *UNAVAILABLE) as e:
            raise _translate(e) from e

    async def _write(self, fn: Callable[[_Write], Awaitable[T]]) -> T:
        async def txn(conn: asyncpg.Connection) -> T:
            async with conn.transaction():
                row = await conn.fetchrow("SELECT revision, compact_revision FROM "
                                          "pgshard_meta.pgshard_revision FOR UPDATE")
                write = _Write(conn, row["revision"], row["compact_revision"])
                for expired in await conn.fetch(EXPIRED):
                    await write.drop_lease(expired["id"])
                result = await fn(write)
                if write.revision != write.start_revision:
                    await self._finish(write)
            return result

        return await self._run(txn)

    async def _finish(self, write: _Write) -> None:
        conn, rev = write.conn, write.revision
        compact = write.compact_revision
        # Trim in batches of 10% so the log is not rewritten on every single write.
        if rev - compact > self._max_events + max(1, self._max_events // 10):
            compact = rev - self._max_events
            await conn.execute("DELETE FROM pgshard_meta.pgshard_events WHERE revision <= $1",
                               compact)
        await conn.execute("UPDATE pgshard_meta.pgshard_revision SET revision = $1, "
                           "compact_revision = $2", rev, compact)
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(rev))

    async def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        if await self._run(lambda conn: conn.fetchval(ANY_EXPIRED)):
            await self._write(_nothing)
        return await self._run(fn)

    async def _reap_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(REAP_INTERVAL)
            with contextlib.suppress(StoreError):
                if await self._run(lambda conn: conn.fetchval(ANY_EXPIRED)):
                    await self._write(_nothing)

    def _kv(self, row: asyncpg.Record) -> KeyValue:
        return KeyValue(self.keys.relative(row["key"]), bytes(row["value"]), row["revision"],
                        row["create_revision"])

    async def _current(self, conn: asyncpg.Connection, full_key: str) -> KeyValue | None:
        row = await conn.fetchrow(f"SELECT {KV_COLUMNS} FROM pgshard_meta.pgshard_kv "
                                  "WHERE key = $1", full_key)
        return self._kv(row) if row else None

    # -- MetadataStore ----------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        full = self.keys.full(key)
        return await self._read(lambda conn: self._current(conn, full))

    async def put(self, key: str, value: bytes, *, expect_revision: int | None = None,
                  lease: Lease | None = None) -> int:
        full = self.keys.full(key)
        value = bytes(value)

        async def op(w: _Write) -> int:
            cur = await self._current(w.conn, full)
            check_revision(key, expect_revision, cur)
            if lease is not None and await w.conn.fetchval(
                    "SELECT 1 FROM pgshard_meta.pgshard_leases WHERE id = $1", lease.id) is None:
                raise LeaseExpired(f"lease {lease.id} expired or was revoked")
            rev = await w.log("put", full, value)
            await w.conn.execute(
                "INSERT INTO pgshard_meta.pgshard_kv VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "revision = excluded.revision, lease_id = excluded.lease_id",
                full, value, rev, cur.create_revision if cur else rev,
                lease.id if lease else None)
            return rev

        return await self._write(op)

    async def delete(self, key: str, *, expect_revision: int | None = None) -> bool:
        full = self.keys.full(key)

        async def op(w: _Write) -> bool:
            cur = await self._current(w.conn, full)
            check_revision(key, expect_revision, cur)
            if cur is None:
                return False
            await w.delete(full)
            return True

        return await self._write(op)

    async def list(self, prefix: str) -> list[KeyValue]:
        start, end = self.keys.range(prefix)

        async def op(conn: asyncpg.Connection) -> list[KeyValue]:
            rows = await conn.fetch(f"SELECT {KV_COLUMNS} FROM pgshard_meta.pgshard_kv "
                                    "WHERE key >= $1 AND key < $2 ORDER BY key", start, end)
            return [self._kv(r) for r in rows if self.keys.matches(prefix, r["key"])]

        return await self._read(op)

    async def _watch(self, prefix: str, start_revision: int | None
                     ) -> AsyncGenerator[WatchEvent, None]:
        start, end = self.keys.range(prefix)
        next_rev = start_revision if start_revision is not None else await self.revision() + 1
        backoff = 0.1
        while not self._closed:
            wake = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._listen(wake)
                backoff = 0.1
                while not self._closed:
                    rows, scanned = await _poll(conn, next_rev, start, end)
                    for row in rows:
                        if self.keys.matches(prefix, row["key"]):
                            yield WatchEvent(row["kind"], self.keys.relative(row["key"]),
                                             bytes(row["value"]), row["revision"])
                        next_rev = row["revision"] + 1
                    next_rev = max(next_rev, scanned + 1)
                    if len(rows) == WATCH_BATCH:
                        continue
                    # NOTIFY wakes us early; the timeout is the safety net for a lost one.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), SAFETY_POLL)
                    wake.clear()
                    if conn.is_closed():
                        raise asyncpg.ConnectionDoesNotExistError("watch connection lost")
            except (asyncpg.PostgresError, *UNAVAILABLE) as e:
                if self._closed:
                    return
                if not isinstance(e, UNAVAILABLE):
                    raise _translate(e) from e
                # Warn once per outage, not on every retry while the server stays down.
                log.log(logging.WARNING if backoff == 0.1 else logging.DEBUG,
                        "postgresql watch broke (%s); resuming from revision %d",
                        _translate(e), next_rev)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            finally:
                if conn is not None:
                    self._watches.discard((conn, wake))
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 1)

    async def _listen(self, wake: asyncio.Event) -> asyncpg.Connection:
        """A new connection that sets `wake` on every NOTIFY and when it is lost."""
        conn = await asyncpg.connect(self._dsn, timeout=self._timeout,
                                     command_timeout=self._timeout)
        self._watches.add((conn, wake))
        try:
            conn.add_termination_listener(lambda _conn: wake.set())
            await conn.add_listener(CHANNEL, lambda *_args: wake.set())
        except BaseException:
            self._watches.discard((conn, wake))
            conn.terminate()
            raise
        return conn

    async def grant_lease(self, ttl: float) -> Lease:
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")

        async def op(w: _Write) -> int:
            return await w.conn.fetchval(
                "INSERT INTO pgshard_meta.pgshard_leases (ttl, expires_at) "
                "VALUES ($1, clock_timestamp() + $1 * interval '1 second') RETURNING id", ttl)

        return Lease(self, await self._write(op), ttl)

    async def _refresh_lease(self, lease_id: int, ttl: float) -> None:
        async def op(w: _Write) -> None:
            # _write reaped expired leases first, so a missing row means expired or revoked.
            done = await w.conn.execute(
                "UPDATE pgshard_meta.pgshard_leases "
                "SET expires_at = clock_timestamp() + $2 * interval '1 second' WHERE id = $1",
                lease_id, ttl)
            if done == "UPDATE 0":
                raise LeaseExpired(f"lease {lease_id} expired or was revoked")

        await self._write(op)

    async def _revoke_lease(self, lease_id: int) -> None:
        await self._write(lambda w: w.drop_lease(lease_id))

    async def revision(self) -> int:
        return await self._run(lambda conn: conn.fetchval(
            "SELECT revision FROM pgshard_meta.pgshard_revision"))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for conn, wake in list(self._watches):
            wake.set()
            conn.terminate()
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), self._timeout)
            self._pool.terminate()


async def _nothing(_write: _Write) -> None:
    """A write that changes nothing: its transaction just reaps expired leases."""


async def _poll(conn: asyncpg.Connection, next_rev: int, start: str, end: str
                ) -> tuple[list[Any], int]:
    """Events from `next_rev` in [start, end), and the revision scanned up to (one snapshot)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rev, compact = await conn.fetchrow("SELECT revision, compact_revision "
                                           "FROM pgshard_meta.pgshard_revision")
        if next_rev <= compact:
            raise RevisionCompacted(next_rev, compact)
        rows = await conn.fetch(
            "SELECT revision, kind, key, value FROM pgshard_meta.pgshard_events "
            "WHERE revision >= $1 AND key >= $2 AND key < $3 ORDER BY revision LIMIT $4",
            next_rev, start, end, WATCH_BATCH)
    scanned = rows[-1]["revision"] if len(rows) == WATCH_BATCH else rev
    return rows, scanned

