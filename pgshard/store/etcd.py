"""The production MetadataStore on etcd v3 (aetcd over gRPC), trying each endpoint in turn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote

import aetcd
from aetcd import exceptions as etcd_errors
from aetcd import rpc

from pgshard.store.base import (
    DEFAULT_TIMEOUT,
    CasFailed,
    KeySpace,
    KeyValue,
    Lease,
    LeaseExpired,
    MetadataStore,
    RevisionCompacted,
    StoreError,
    StoreUnavailable,
    WatchEvent,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BACKOFF = 2.0

# Reconnect quickly once etcd is back (gRPC's default backoff grows to two minutes), and
# find dead connections under an idle watch (etcd rejects pings more often than every 5 s).
CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
}


def parse_url(url: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """`etcd://[user:pw@]host:port[,host:port...]` → (endpoints, username, password)."""
    rest = url.removeprefix("etcd://").rstrip("/")
    username = password = None
    if "@" in rest:
        creds, rest = rest.rsplit("@", 1)
        username, _, password = creds.partition(":")
        username, password = unquote(username), unquote(password)
    endpoints = []
    for part in rest.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"invalid etcd endpoint {part!r}: expected host:port")
        endpoints.append((host.strip("[]"), int(port)))
    return endpoints, username, password


def _translate(e: Exception, where: str) -> StoreError:
    if isinstance(e, StoreError):
        return e
    if isinstance(e, etcd_errors.RevisionCompactedError):
        return RevisionCompacted(0, e.compacted_revision)
    if isinstance(e, etcd_errors.ConnectionFailedError | etcd_errors.ConnectionTimeoutError
                  | etcd_errors.WatchTimeoutError | TimeoutError):
        return StoreUnavailable(f"etcd at {where} unavailable: {e or type(e).__name__}")
    if isinstance(e, rpc.AioRpcError):
        if e.code() in (rpc.StatusCode.UNAVAILABLE, rpc.StatusCode.DEADLINE_EXCEEDED):
            return StoreUnavailable(f"etcd at {where} unavailable: {e.details()}")
        return StoreError(f"etcd at {where}: {e.details()}")
    if "lease not found" in str(e):
        return LeaseExpired(f"etcd lease expired or was revoked ({e})")
    return StoreError(f"etcd at {where}: {e}")


def _unreachable(e: BaseException) -> bool:
    """Whether the endpoint could not be reached (gRPC UNAVAILABLE): try the next one."""
    if isinstance(e, rpc.AioRpcError):
        return e.code() == rpc.StatusCode.UNAVAILABLE
    return isinstance(e, etcd_errors.ConnectionFailedError)


class EtcdStore(MetadataStore):
    """One aetcd client for requests (rotated to the next endpoint when one is unreachable)
    and one private client per watch, so a broken watch stream never disturbs the others."""

    def __init__(self, endpoints: list[tuple[str, int]], *, cluster: str,
                 username: str | None = None, password: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT):
        if not endpoints:
            raise ValueError("no etcd endpoints given")
        self.keys = KeySpace(cluster)
        self._endpoints = endpoints
        self._username = username
        self._password = password
        self._timeout = timeout
        self._current = 0
        self._client = self._new_client(0)
        self._watch_clients: set[aetcd.Client] = set()
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, cluster: str = "default",
                   timeout: float = DEFAULT_TIMEOUT) -> EtcdStore:
        endpoints, username, password = parse_url(url)
        store = cls(endpoints, cluster=cluster, username=username, password=password,
                    timeout=timeout)
        try:
            await store.revision()
        except BaseException:
            await store.close()
            raise
        return store

    # -- plumbing ---------------------------------------------------------------------------

    def _new_client(self, index: int) -> aetcd.Client:
        host, port = self._endpoints[index % len(self._endpoints)]
        return aetcd.Client(host=host, port=port, username=self._username,
                            password=self._password, timeout=self._timeout,
                            options=CHANNEL_OPTIONS, connect_wait_timeout=self._timeout)

    def _where(self, index: int) -> str:
        host, port = self._endpoints[index % len(self._endpoints)]
        return f"{host}:{port}"

    async def _call(self, fn: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """Run `fn` against the current endpoint, moving on to the next while one is down.

        Only "connection failed" moves on: the request never reached that server, so
        retrying it elsewhere cannot apply it twice.
        """
        if self._closed:
            raise StoreError("the store is closed")
        last: StoreError | None = None
        for _ in range(len(self._endpoints)):
            client, index = self._client, self._current
            try:
                return await asyncio.wait_for(fn(client), self._timeout + 1)
            except (TimeoutError, etcd_errors.ClientError, rpc.AioRpcError) as e:
                err = _translate(e, self._where(index))
                if not _unreachable(e):
                    raise err from e
                last = err
                if self._client is client and len(self._endpoints) > 1:
                    self._current = index + 1
                    self._client = self._new_client(self._current)
                    asyncio.get_running_loop().create_task(client.close())
        assert last is not None
        if len(self._endpoints) > 1:
            last = StoreUnavailable(
                "no etcd endpoint reachable (" + ", ".join(
                    self._where(i) for i in range(len(self._endpoints))) + f"): {last}")
        raise last

    def _kv(self, kv: Any) -> KeyValue:
        return KeyValue(self.keys.relative(kv.key.decode()), bytes(kv.value),
                        kv.mod_revision, kv.create_revision)

    # -- MetadataStore ----------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        full = self.keys.full(key).encode()
        got = await self._call(lambda c: c.get(full))
        return self._kv(got) if got is not None else None

    async def put(self, key: str, value: bytes, *, expect_revision: int | None = None,
                  lease: Lease | None = None) -> int:
        full = self.keys.full(key).encode()
        lease_id = lease.id if lease is not None else 0
        if expect_revision is None:
            put = await self._call(lambda c: c.put(full, bytes(value), lease=lease_id))
            return put.header.revision
        ok, responses = await self._call(lambda c: c.transaction(
            compare=[self._compare(c, full, expect_revision)],
            success=[c.transactions.put(full, bytes(value), lease=lease_id)],
            failure=[c.transactions.get(full)]))
        if not ok:
            raise CasFailed(key, expect_revision, self._first(responses))
        return responses[0].response_put.header.revision

    async def delete(self, key: str, *, expect_revision: int | None = None) -> bool:
        full = self.keys.full(key).encode()
        ok, responses = await self._call(lambda c: c.transaction(
            compare=[] if expect_revision is None else [self._compare(c, full, expect_revision)],
            success=[c.transactions.delete(full)],
            failure=[c.transactions.get(full)]))
        if not ok:
            raise CasFailed(key, expect_revision, self._first(responses))
        return responses[0].response_delete_range.deleted > 0

    @staticmethod
    def _compare(client: aetcd.Client, full: bytes, expect_revision: int | None) -> Any:
        if expect_revision == 0:
            return client.transactions.create(full) == 0
        return client.transactions.mod(full) == expect_revision

    def _first(self, responses: list[Any]) -> KeyValue | None:
        found = responses[0] if responses else []
        return self._kv(found[0][1]) if found else None

    async def list(self, prefix: str) -> list[KeyValue]:
        start, end = self.keys.range(prefix)
        got = await self._call(lambda c: c.get_range(start.encode(), end.encode(),
                                                     sort_order="ascend"))
        kvs = [self._kv(kv) for kv in got]
        return [kv for kv in kvs if self.keys.matches(prefix, self.keys.root + kv.key)]

    async def _watch(self, prefix: str, start_revision: int | None
                     ) -> AsyncGenerator[WatchEvent, None]:
        start, end = self.keys.range(prefix)
        next_rev = start_revision if start_revision is not None else await self.revision() + 1
        last_seen = next_rev - 1
        index = self._current
        backoff = 0.1
        while not self._closed:
            # Events of one revision (a lease's keys) arrive in one response, so resuming
            # from last_seen + 1 neither splits nor repeats a revision.
            next_rev = last_seen + 1
            client = self._new_client(index)
            self._watch_clients.add(client)
            try:
                stream = await client.watch(start.encode(), range_end=end.encode(),
                                            start_revision=next_rev)
                backoff = 0.1
                async for ev in stream:
                    full_key = ev.kv.key.decode()
                    if ev.kv.mod_revision < next_rev or not self.keys.matches(prefix, full_key):
                        continue
                    last_seen = ev.kv.mod_revision
                    yield WatchEvent("put" if ev.kind == "PUT" else "delete",
                                     self.keys.relative(full_key), bytes(ev.kv.value),
                                     ev.kv.mod_revision)
                if self._closed:
                    return
                raise StoreUnavailable("etcd watch stream ended")
            except etcd_errors.RevisionCompactedError as e:
                raise RevisionCompacted(next_rev, e.compacted_revision) from e
            except (etcd_errors.ClientError, rpc.AioRpcError, StoreUnavailable) as e:
                if self._closed:
                    return
                err = _translate(e, self._where(index))
                if not isinstance(err, StoreUnavailable):
                    raise err from e
                # Warn once per outage, not on every retry while etcd stays down.
                log.log(logging.WARNING if backoff == 0.1 else logging.DEBUG,
                        "etcd watch on %s broke (%s); resuming from revision %d",
                        self._where(index), err, last_seen + 1)
                index += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            finally:
                self._watch_clients.discard(client)
                with contextlib.suppress(Exception):
                    await client.close()

    async def grant_lease(self, ttl: float) -> Lease:
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")
        # etcd counts whole seconds (and raises tiny TTLs to its minimum, about 1-2 s).
        granted = await self._call(lambda c: c.lease(math.ceil(ttl)))
        return Lease(self, granted.id, ttl)

    async def _refresh_lease(self, lease_id: int, ttl: float) -> None:
        reply = await self._call(lambda c: c.refresh_lease(lease_id))
        if reply is None or reply.TTL <= 0:
            raise LeaseExpired(f"etcd lease {lease_id:x} expired or was revoked")

    async def _revoke_lease(self, lease_id: int) -> None:
        with contextlib.suppress(LeaseExpired):
            await self._call(lambda c: c.revoke_lease(lease_id))

    async def revision(self) -> int:
        async def op(c: aetcd.Client) -> int:
            await c.connect()
            reply = await c.kvstub.Range(rpc.RangeRequest(key=self.keys.root.encode(),
                                                          count_only=True),
                                         timeout=self._timeout, metadata=c.metadata)
            return reply.header.revision

        return await self._call(op)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for client in [self._client, *self._watch_clients]:
            with contextlib.suppress(Exception):
                await client.close()
