"""The metadata store: `open_store(url)` picks the SQLite, etcd or PostgreSQL backend."""

from __future__ import annotations

from pgshard.store.base import (
    DEFAULT_TIMEOUT,
    CasFailed,
    KeyValue,
    Lease,
    LeaseExpired,
    MetadataStore,
    RevisionCompacted,
    StoreError,
    StoreUnavailable,
    WatchEvent,
    WatchStream,
)

__all__ = [
    "CasFailed",
    "KeyValue",
    "Lease",
    "LeaseExpired",
    "MetadataStore",
    "RevisionCompacted",
    "StoreError",
    "StoreUnavailable",
    "WatchEvent",
    "WatchStream",
    "open_store",
]

SCHEMES = ("sqlite://", "etcd://", "postgresql://", "postgres://")


async def open_store(url: str, *, cluster: str = "default",
                     timeout: float = DEFAULT_TIMEOUT) -> MetadataStore:
    """Open the store at `url`; keys live under `/pgshard/<cluster>/`.

    `sqlite:///abs/path.db`, `sqlite://rel/path.db`, `sqlite://:memory:`,
    `etcd://host:port[,host:port...]`, `postgresql://user:pw@host:port/db`.
    Raises StoreUnavailable if the server cannot be reached within `timeout` seconds.
    """
    if url.startswith("sqlite://"):
        from pgshard.store.sqlite import SQLiteStore

        path = url.removeprefix("sqlite://")
        if not path:
            raise ValueError(f"store URL {url!r} names no file")
        return await SQLiteStore.open(path, cluster=cluster, timeout=timeout)
    if url.startswith("etcd://"):
        from pgshard.store.etcd import EtcdStore

        return await EtcdStore.open(url, cluster=cluster, timeout=timeout)
    if url.startswith(("postgresql://", "postgres://")):
        from pgshard.store.postgresql import PostgresStore

        return await PostgresStore.open(url, cluster=cluster, timeout=timeout)
    scheme = url.split("://", 1)[0] if "://" in url else url[:20]
    raise ValueError(f"unsupported metadata store URL scheme {scheme!r}: expected one of "
                     + ", ".join(s + "..." for s in SCHEMES))
