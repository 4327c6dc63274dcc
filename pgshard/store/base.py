"""The MetadataStore interface shared by every backend: records, errors, leases, key layout."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal

DEFAULT_TIMEOUT = 5.0


class StoreError(Exception):
    """Base class of every metadata store error."""


class StoreUnavailable(StoreError):
    """The store's server is down, unreachable or not answering in time."""


class CasFailed(StoreError):
    """A compare-and-swap precondition did not hold; `current` is what the store holds now."""

    def __init__(self, key: str, expected: int | None, current: KeyValue | None):
        self.key = key
        self.expected = expected
        self.current = current
        have = current.revision if current is not None else "absent"
        super().__init__(f"compare-and-swap failed on {key!r}: expected revision {expected}, "
                         f"found {have}")


class LeaseExpired(StoreError):
    """The lease is unknown to the store: it expired or was revoked."""


class RevisionCompacted(StoreError):
    """A watch asked for history older than the store still keeps."""

    def __init__(self, requested: int, compact_revision: int):
        self.requested = requested
        self.compact_revision = compact_revision
        super().__init__(f"cannot watch from revision {requested}: history up to revision "
                         f"{compact_revision} has been compacted")


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    revision: int
    create_revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: str
    value: bytes
    revision: int


class Lease:
    """A TTL granted by the store; keys put under it are deleted when it expires or is revoked."""

    __slots__ = ("id", "ttl", "_store")

    def __init__(self, store: MetadataStore, lease_id: int, ttl: float):
        self.id = lease_id
        self.ttl = ttl
        self._store = store

    async def refresh(self) -> None:
        """Restart the TTL; raises LeaseExpired if the lease is already gone."""
        await self._store._refresh_lease(self.id, self.ttl)

    async def revoke(self) -> None:
        """End the lease now, deleting its keys (a no-op if it is already gone)."""
        await self._store._revoke_lease(self.id)

    def __repr__(self) -> str:
        return f"Lease(id={self.id}, ttl={self.ttl})"


class WatchStream:
    """The async iterator `watch()` returns.

    Guards the backend's generator: on CPython 3.11 a generator whose cleanup awaits a
    cancelled task stays flagged "running" after aclose(), so anext() would not stop cleanly.
    """

    __slots__ = ("_events", "_closed")

    def __init__(self, events: AsyncGenerator[WatchEvent, None]):
        self._events = events
        self._closed = False

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> WatchEvent:
        if self._closed:
            raise StopAsyncIteration
        try:
            return await self._events.__anext__()
        except BaseException:
            self._closed = True
            raise

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._events.aclose()


class KeySpace:
    """Maps relative keys to the absolute `/pgshard/<cluster>/...` keys a backend stores.

    A prefix names a directory: `list("jobs")` matches `jobs` and `jobs/...` but never `jobs2`.
    A prefix that is empty or ends with "/" matches as a plain string prefix.
    """

    def __init__(self, cluster: str):
        if not cluster or "/" in cluster:
            raise ValueError(f"invalid cluster name {cluster!r}")
        self.root = f"/pgshard/{cluster}/"

    def full(self, key: str) -> str:
        if not key or key.startswith("/") or key.endswith("/"):
            raise ValueError(f"invalid key {key!r}: keys are relative, like 'jobs/17'")
        return self.root + key

    def relative(self, full_key: str) -> str:
        return full_key[len(self.root):]

    def range(self, prefix: str) -> tuple[str, str]:
        """The half-open key range [start, end) that covers `prefix`; filter with `matches`."""
        if prefix.startswith("/"):
            raise ValueError(f"invalid prefix {prefix!r}: prefixes are relative")
        start = self.root + prefix
        if not prefix or prefix.endswith("/"):
            return start, start[:-1] + chr(ord(start[-1]) + 1)
        # "/" is 0x2F and "0" is 0x30: [p, p + "0") holds p, p/... and a few siblings like p-x.
        return start, start + "0"

    def matches(self, prefix: str, full_key: str) -> bool:
        start = self.root + prefix
        if not prefix or prefix.endswith("/"):
            return full_key.startswith(start)
        return full_key == start or full_key.startswith(start + "/")


def check_revision(key: str, expect_revision: int | None, current: KeyValue | None) -> None:
    """Raise CasFailed unless `current` is at `expect_revision` (0: absent; None: anything)."""
    if expect_revision is None:
        return
    have = current.revision if current is not None else 0
    if have != expect_revision:
        raise CasFailed(key, expect_revision, current)


class MetadataStore(abc.ABC):
    """Async key-value store with global revisions, CAS, prefix watches and leases.

    Revisions are store-wide and strictly increasing; every put/delete gets a new one.
    """

    keys: KeySpace

    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None:
        """The current value of `key`, or None."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, *, expect_revision: int | None = None,
                  lease: Lease | None = None) -> int:
        """Write `key` and return the new revision.

        With `expect_revision` the write happens only if the key's current revision equals
        it (0: the key must not exist); otherwise CasFailed carries the current KeyValue.
        """

    @abc.abstractmethod
    async def delete(self, key: str, *, expect_revision: int | None = None) -> bool:
        """Delete `key`; False if it did not exist. `expect_revision` as for put."""

    @abc.abstractmethod
    async def list(self, prefix: str) -> list[KeyValue]:
        """Every key under `prefix` (see KeySpace), sorted by key."""

    def watch(self, prefix: str, *, start_revision: int | None = None) -> WatchStream:
        """Changes under `prefix` with revision >= start_revision, in revision order.

        Without `start_revision` the watch starts after the revision current when iteration
        begins. The iterator reconnects with backoff and resumes without losing or repeating
        events; `aclose()` stops it. History older than the store keeps: RevisionCompacted.
        """
        return WatchStream(self._watch(prefix, start_revision))

    @abc.abstractmethod
    def _watch(self, prefix: str, start_revision: int | None) -> AsyncGenerator[WatchEvent, None]:
        """The backend's watch loop, as an async generator."""

    @abc.abstractmethod
    async def grant_lease(self, ttl: float) -> Lease:
        """A new lease of `ttl` seconds (etcd rounds up to whole seconds)."""

    @abc.abstractmethod
    async def revision(self) -> int:
        """The store's current revision."""

    async def ping(self) -> bool:
        """True if the store answers, False otherwise; never raises."""
        try:
            await self.revision()
        except StoreError:
            return False
        return True

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and background tasks; open watches end."""

    @abc.abstractmethod
    async def _refresh_lease(self, lease_id: int, ttl: float) -> None: ...

    @abc.abstractmethod
    async def _revoke_lease(self, lease_id: int) -> None: ...

    async def try_acquire(self, key: str, holder_id: str, lease: Lease) -> bool:
        """Election: become the holder of `key` if nobody holds it.

        Puts `holder_id` with expect_revision=0 under `lease`, so the key (and leadership)
        vanishes when the lease lapses. False if someone, including this holder under another
        lease, already holds it; watch the key for its "delete" to know when to retry.
        """
        try:
            await self.put(key, holder_id.encode(), expect_revision=0, lease=lease)
        except CasFailed:
            return False
        return True

    async def __aenter__(self) -> MetadataStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
