"""The embedded MetadataStore: one SQLite file in WAL mode, watched by polling its event log."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

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

T = TypeVar("T")

POLL_INTERVAL = 0.05
REAP_INTERVAL = 0.2
MAX_EVENTS = 10_000
WATCH_BATCH = 500
# Locked, unopenable or failing files; anything else is a bug or corruption (StoreError).
UNAVAILABLE_CODES = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_IOERR",
                     "SQLITE_FULL", "SQLITE_READONLY", "SQLITE_PROTOCOL")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compact_revision', 0);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, revision INTEGER NOT NULL,
    create_revision INTEGER NOT NULL, lease_id INTEGER);
CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease_id) WHERE lease_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ttl REAL NOT NULL, expires_at REAL NOT NULL);
"""


class SQLiteStore(MetadataStore):
    """All SQLite calls run on one private thread that owns the connection.

    Strategy: every write is a `BEGIN IMMEDIATE` transaction that first reaps expired leases,
    then bumps the global revision in `meta` and appends to `events`, so the event log is a
    gap-free, commit-ordered history that any process sharing the file can poll.
    """

    def __init__(self, path: str, *, cluster: str, timeout: float = DEFAULT_TIMEOUT,
                 max_events: int = MAX_EVENTS):
        self.keys = KeySpace(cluster)
        self.path = path
        self._timeout = timeout
        self._max_events = max_events
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgshard-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: str, *, cluster: str = "default",
                   timeout: float = DEFAULT_TIMEOUT, max_events: int = MAX_EVENTS) -> SQLiteStore:
        store = cls(path, cluster=cluster, timeout=timeout, max_events=max_events)
        try:
            await store._call(store._connect)
        except BaseException:
            store._executor.shutdown(wait=False)
            raise
        store._reaper = asyncio.create_task(store._reap_forever(), name="pgshard-sqlite-reaper")
        return store

    # -- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> None:
        # Processes opening one new file at once (serve --workers N) race for the switch to
        # WAL, which SQLite answers with "database is locked" at once, without waiting in
        # its busy handler: try again until the timeout.
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                self._conn = self._connect_once()
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _connect_once(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
            conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.DatabaseError as e:
            if (getattr(e, "sqlite_errorname", "") or "").startswith(UNAVAILABLE_CODES):
                raise StoreUnavailable(f"sqlite store {self.path!r} unavailable: {e}") from e
            raise StoreError(f"sqlite store {self.path!r}: {e}") from e

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is closed")
        return self._conn

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._db
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._reap_expired(conn)
            result = fn(conn)
            self._trim(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._db
        if self._has_expired(conn):
            self._write(lambda c: None)
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    @staticmethod
    def _has_expired(conn: sqlite3.Connection) -> bool:
        row = conn.execute("SELECT 1 FROM leases WHERE expires_at <= ? LIMIT 1",
                           (time.time(),)).fetchone()
        return row is not None

    @staticmethod
    def _next_revision(conn: sqlite3.Connection) -> int:
        return conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision' "
                            "RETURNING value").fetchone()[0]

    def _delete_logged(self, conn: sqlite3.Connection, full_key: str) -> int:
        rev = self._next_revision(conn)
        conn.execute("DELETE FROM kv WHERE key = ?", (full_key,))
        conn.execute("INSERT INTO events VALUES (?, 'delete', ?, x'')", (rev, full_key))
        return rev

    def _drop_lease(self, conn: sqlite3.Connection, lease_id: int) -> None:
        keys = conn.execute("SELECT key FROM kv WHERE lease_id = ? ORDER BY key",
                            (lease_id,)).fetchall()
        for (key,) in keys:
            self._delete_logged(conn, key)
        conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))

    def _reap_expired(self, conn: sqlite3.Connection) -> None:
        expired = conn.execute("SELECT id FROM leases WHERE expires_at <= ? ORDER BY id",
                               (time.time(),)).fetchall()
        for (lease_id,) in expired:
            self._drop_lease(conn, lease_id)

    def _trim(self, conn: sqlite3.Connection) -> None:
        rev, compact = (r[0] for r in conn.execute(
            "SELECT value FROM meta WHERE name IN ('revision', 'compact_revision') "
            "ORDER BY name DESC"))
        # Trim in batches of 10% so the log is not rewritten on every single write.
        if rev - compact > self._max_events + max(1, self._max_events // 10):
            new_compact = rev - self._max_events
            conn.execute("DELETE FROM events WHERE revision <= ?", (new_compact,))
            conn.execute("UPDATE meta SET value = ? WHERE name = 'compact_revision'",
                         (new_compact,))

    async def _reap_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(REAP_INTERVAL)
            with contextlib.suppress(StoreError):
                await self._call(self._reap_if_needed)

    def _reap_if_needed(self) -> None:
        if self._has_expired(self._db):
            self._write(lambda c: None)

    def _kv(self, row: tuple[str, bytes, int, int]) -> KeyValue:
        return KeyValue(self.keys.relative(row[0]), bytes(row[1]), row[2], row[3])

    def _current(self, conn: sqlite3.Connection, full_key: str) -> KeyValue | None:
        row = conn.execute("SELECT key, value, revision, create_revision FROM kv WHERE key = ?",
                           (full_key,)).fetchone()
        return self._kv(row) if row else None

    # -- MetadataStore ----------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        full = self.keys.full(key)
        return await self._call(self._read, lambda c: self._current(c, full))

    async def put(self, key: str, value: bytes, *, expect_revision: int | None = None,
                  lease: Lease | None = None) -> int:
        full = self.keys.full(key)
        value = bytes(value)

        def op(conn: sqlite3.Connection) -> int:
            cur = self._current(conn, full)
            check_revision(key, expect_revision, cur)
            if lease is not None and conn.execute(
                    "SELECT 1 FROM leases WHERE id = ?", (lease.id,)).fetchone() is None:
                raise LeaseExpired(f"lease {lease.id} expired or was revoked")
            rev = self._next_revision(conn)
            conn.execute(
                "INSERT INTO kv VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value, revision = excluded.revision, lease_id = excluded.lease_id",
                (full, value, rev, cur.create_revision if cur else rev,
                 lease.id if lease else None))
            conn.execute("INSERT INTO events VALUES (?, 'put', ?, ?)", (rev, full, value))
            return rev

        return await self._call(self._write, op)

    async def delete(self, key: str, *, expect_revision: int | None = None) -> bool:
        full = self.keys.full(key)

        def op(conn: sqlite3.Connection) -> bool:
            cur = self._current(conn, full)
            check_revision(key, expect_revision, cur)
            if cur is None:
                return False
            self._delete_logged(conn, full)
            return True

        return await self._call(self._write, op)

    async def list(self, prefix: str) -> list[KeyValue]:
        start, end = self.keys.range(prefix)

        def op(conn: sqlite3.Connection) -> list[KeyValue]:
            rows = conn.execute(
                "SELECT key, value, revision, create_revision FROM kv "
                "WHERE key >= ? AND key < ? ORDER BY key", (start, end)).fetchall()
            return [self._kv(r) for r in rows if self.keys.matches(prefix, r[0])]

        return await self._call(self._read, op)

    async def _watch(self, prefix: str, start_revision: int | None
                     ) -> AsyncGenerator[WatchEvent, None]:
        start, end = self.keys.range(prefix)
        next_rev = start_revision if start_revision is not None else await self.revision() + 1
        backoff = POLL_INTERVAL

        def poll(conn: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], int]:
            rev, compact = (r[0] for r in conn.execute(
                "SELECT value FROM meta WHERE name IN ('revision', 'compact_revision') "
                "ORDER BY name DESC"))
            if next_rev <= compact:
                raise RevisionCompacted(next_rev, compact)
            rows = conn.execute(
                "SELECT revision, kind, key, value FROM events WHERE revision >= ? "
                "AND key >= ? AND key < ? ORDER BY revision LIMIT ?",
                (next_rev, start, end, WATCH_BATCH)).fetchall()
            # Everything up to `rev` was visible in this snapshot, so skip past it.
            scanned = rows[-1][0] if len(rows) == WATCH_BATCH else rev
            return rows, scanned

        while not self._closed:
            try:
                rows, scanned = await self._call(self._read, poll)
            except StoreUnavailable:
                if self._closed:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except StoreError:
                if self._closed:
                    return
                raise
            backoff = POLL_INTERVAL
            for rev, kind, full_key, value in rows:
                if self.keys.matches(prefix, full_key):
                    yield WatchEvent(kind, self.keys.relative(full_key), bytes(value), rev)
                next_rev = rev + 1
            next_rev = max(next_rev, scanned + 1)
            if len(rows) < WATCH_BATCH:
                await asyncio.sleep(POLL_INTERVAL)

    async def grant_lease(self, ttl: float) -> Lease:
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("INSERT INTO leases (ttl, expires_at) VALUES (?, ?) RETURNING id",
                                (ttl, time.time() + ttl)).fetchone()[0]

        return Lease(self, await self._call(self._write, op), ttl)

    async def _refresh_lease(self, lease_id: int, ttl: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            # _write reaped expired leases first, so a missing row means expired or revoked.
            cur = conn.execute("UPDATE leases SET expires_at = ? WHERE id = ?",
                               (time.time() + ttl, lease_id))
            if cur.rowcount == 0:
                raise LeaseExpired(f"lease {lease_id} expired or was revoked")

        await self._call(self._write, op)

    async def _revoke_lease(self, lease_id: int) -> None:
        await self._call(self._write, lambda conn: self._drop_lease(conn, lease_id))

    async def revision(self) -> int:
        return await self._call(self._read, lambda conn: conn.execute(
            "SELECT value FROM meta WHERE name = 'revision'").fetchone()[0])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=False)

