"""One conformance suite for every MetadataStore backend: SQLite, etcd and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aetcd
import asyncpg
import pytest

from pgshard.cluster import free_port
from pgshard.store import (
    CasFailed,
    LeaseExpired,
    MetadataStore,
    RevisionCompacted,
    StoreError,
    StoreUnavailable,
    WatchEvent,
    open_store,
)
from pgshard.store.postgresql import PostgresStore
from pgshard.store.sqlite import SQLiteStore
from tests.fixtures.clusters import temp_cluster
from tests.fixtures.etcd import EtcdServer, running_etcd

BACKENDS = ["sqlite", "etcd", "postgresql"]
LEASE_TTL = 1.0
# etcd counts whole seconds and checks for expired leases every 500 ms.
EXPIRY_WAIT = 5.0


async def _noop() -> None:
    return None


@dataclass
class Backend:
    """How to reach, break and restart one backend's server; each test gets its own keys."""

    name: str
    url: str
    down_url: str
    cluster: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:12]}")
    stop: Callable[[], Awaitable[None]] = _noop
    start: Callable[[], Awaitable[None]] = _noop
    compact: Callable[[MetadataStore], Awaitable[None]] = _noop
    stores: list[MetadataStore] = field(default_factory=list)

    async def open(self) -> MetadataStore:
        store = await open_store(self.url, cluster=self.cluster)
        self.stores.append(store)
        return store

    async def close_all(self) -> None:
        for store in self.stores:
            await store.close()


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def etcd_server():
    with running_etcd() as server:
        yield server


def _sqlite_backend(tmp_path) -> Backend:
    path = tmp_path / "meta.db"
    backend = Backend("sqlite", f"sqlite://{path}", f"sqlite://{tmp_path}/missing/dir/meta.db")

    async def compact(store: MetadataStore) -> None:
        # A writer with a 1-event log trims everything else away.
        trimmer = await SQLiteStore.open(str(path), cluster=backend.cluster, max_events=1)
        await trimmer.put("compact/trigger", b"x")
        await trimmer.close()

    backend.compact = compact
    return backend


def _etcd_backend(server: EtcdServer) -> Backend:
    backend = Backend("etcd", server.url, f"etcd://127.0.0.1:{free_port()}")

    async def compact(store: MetadataStore) -> None:
        async with aetcd.Client(host="127.0.0.1", port=server.client_port) as client:
            await client.compact(await store.revision())

    async def stop() -> None:
        await asyncio.to_thread(server.stop)

    async def start() -> None:
        await asyncio.to_thread(server.start)

    backend.compact, backend.stop, backend.start = compact, stop, start
    return backend


def _pg_backend(node, database: str) -> Backend:
    url = node.dsn.rsplit("/", 1)[0] + "/" + database
    backend = Backend("postgresql", url, f"postgresql://pgshard:x@127.0.0.1:{free_port()}/app")

    async def compact(store: MetadataStore) -> None:
        trimmer = await PostgresStore.open(url, cluster=backend.cluster, max_events=1)
        await trimmer.put("compact/trigger", b"x")
        await trimmer.close()

    async def stop() -> None:
        await asyncio.to_thread(node.stop)

    async def start() -> None:
        await asyncio.to_thread(node.start)

    backend.compact, backend.stop, backend.start = compact, stop, start
    return backend


async def _create_database(node) -> str:
    database = f"store_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(node.admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return database


async def _drop_database(node, database: str) -> None:
    conn = await asyncpg.connect(node.admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=BACKENDS)
async def backend(request, tmp_path) -> AsyncIterator[Backend]:
    """A backend on a shared server (etcd: session server; postgresql: pg_cluster)."""
    if request.param == "sqlite":
        b = _sqlite_backend(tmp_path)
        yield b
        await b.close_all()
    elif request.param == "etcd":
        b = _etcd_backend(request.getfixturevalue("etcd_server"))
        yield b
        await b.close_all()
    else:
        node = request.getfixturevalue("pg_cluster").shards[0].primary
        database = await _create_database(node)
        b = _pg_backend(node, database)
        yield b
        await b.close_all()
        await _drop_database(node, database)


@pytest.fixture(params=BACKENDS)
async def restartable(request, tmp_path) -> AsyncIterator[Backend]:
    """A backend whose server this test alone may stop and start."""
    if request.param == "sqlite":
        b = _sqlite_backend(tmp_path)
        yield b
        await b.close_all()
    elif request.param == "etcd":
        with running_etcd() as server:
            b = _etcd_backend(server)
            yield b
            await b.close_all()
    else:
        cluster_cm = temp_cluster(shards=1, replicas=0)
        cluster = await asyncio.to_thread(cluster_cm.__enter__)
        try:
            b = _pg_backend(cluster.shards[0].primary, cluster.database)
            yield b
            await b.close_all()
        finally:
            await asyncio.to_thread(cluster_cm.__exit__, None, None, None)


@pytest.fixture
async def store(backend: Backend) -> MetadataStore:
    return await backend.open()


class Collector:
    """Consumes a watch in a background task so a test can wait for its events."""

    def __init__(self, events: AsyncIterator[WatchEvent]):
        self.events: list[WatchEvent] = []
        self._iterator = events
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self._iterator:
            self.events.append(event)

    async def wait(self, count: int, timeout: float = 5.0) -> list[WatchEvent]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            if self._task.done():
                self._task.result()
                raise AssertionError(f"watch ended after {self.events}")
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout}s for {count} events, got {self.events}")
            await asyncio.sleep(0.02)
        return self.events

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


def summary(events: list[WatchEvent]) -> list[tuple[str, str, bytes]]:
    return [(e.kind, e.key, e.value) for e in events]


async def put_until_up(store: MetadataStore, key: str, value: bytes, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await store.put(key, value)
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


# -- key-value ---------------------------------------------------------------------------------


async def test_put_get(store: MetadataStore):
    assert await store.get("catalog") is None
    rev1 = await store.put("catalog", b"v1")
    kv = await store.get("catalog")
    assert (kv.key, kv.value, kv.revision, kv.create_revision) == ("catalog", b"v1", rev1, rev1)
    rev2 = await store.put("catalog", b"v2")
    assert rev2 > rev1
    kv = await store.get("catalog")
    assert (kv.value, kv.revision, kv.create_revision) == (b"v2", rev2, rev1)
    assert await store.ping() is True


async def test_compare_and_swap(store: MetadataStore):
    rev = await store.put("jobs/1", b"new", expect_revision=0)
    with pytest.raises(CasFailed) as failed:
        await store.put("jobs/1", b"again", expect_revision=0)
    assert failed.value.current.value == b"new" and failed.value.current.revision == rev

    rev2 = await store.put("jobs/1", b"second", expect_revision=rev)
    with pytest.raises(CasFailed) as failed:
        await store.put("jobs/1", b"stale", expect_revision=rev)
    assert failed.value.current.revision == rev2
    assert (await store.get("jobs/1")).value == b"second"

    with pytest.raises(CasFailed) as failed:
        await store.put("jobs/missing", b"x", expect_revision=rev2)
    assert failed.value.current is None
    assert await store.get("jobs/missing") is None


async def test_delete(store: MetadataStore):
    assert await store.delete("users/alice") is False
    rev = await store.put("users/alice", b"a")
    with pytest.raises(CasFailed):
        await store.delete("users/alice", expect_revision=rev + 100)
    with pytest.raises(CasFailed):
        await store.delete("users/alice", expect_revision=0)
    assert await store.delete("users/alice", expect_revision=rev) is True
    assert await store.get("users/alice") is None
    assert await store.delete("users/alice", expect_revision=0) is False
    assert await store.revision() > rev


async def test_list_by_prefix(backend: Backend, store: MetadataStore):
    for key in ["jobs/2", "jobs/1", "jobs2/1", "jobs-x", "jobs", "catalog", "jobs/1/step"]:
        await store.put(key, key.encode())
    assert [kv.key for kv in await store.list("jobs/")] == ["jobs/1", "jobs/1/step", "jobs/2"]
    assert [kv.key for kv in await store.list("jobs")] == [
        "jobs", "jobs/1", "jobs/1/step", "jobs/2"]
    assert [kv.key for kv in await store.list("jobs2")] == ["jobs2/1"]
    everything = await store.list("")
    assert [kv.key for kv in everything] == sorted(kv.key for kv in everything)
    assert len(everything) == 7 and everything[0].value == everything[0].key.encode()

    other = await open_store(backend.url, cluster=backend.cluster + "x")
    try:
        assert await other.list("") == []
        assert await other.get("catalog") is None
    finally:
        await other.close()


async def test_revisions_are_monotonic(store: MetadataStore):
    seen = [await store.revision()]
    for i in range(5):
        seen.append(await store.put(f"audit/{i}", b"x"))
        assert await store.revision() == seen[-1]
    await store.delete("audit/0")
    seen.append(await store.revision())
    assert seen == sorted(set(seen))


async def test_bad_keys_are_rejected(store: MetadataStore):
    for key in ["", "/abs", "dir/"]:
        with pytest.raises(ValueError):
            await store.put(key, b"x")


# -- watches -----------------------------------------------------------------------------------


async def test_watch_sees_puts_and_deletes_in_order(store: MetadataStore):
    start = await store.revision() + 1
    watch = Collector(store.watch("routers", start_revision=start))
    try:
        r1 = await store.put("routers/r1", b"up")
        await store.put("other/x", b"ignored")
        await store.put("routers2/x", b"ignored")
        r2 = await store.put("routers/r2", b"up")
        r3 = await store.put("routers/r1", b"busy")
        assert await store.delete("routers/r2") is True
        r4 = await store.revision()
        events = await watch.wait(4)
        assert summary(events) == [("put", "routers/r1", b"up"), ("put", "routers/r2", b"up"),
                                   ("put", "routers/r1", b"busy"), ("delete", "routers/r2", b"")]
        assert [e.revision for e in events] == [r1, r2, r3, r4]
        await asyncio.sleep(0.3)
        assert len(watch.events) == 4
    finally:
        await watch.close()


async def test_watch_without_start_revision_sees_only_new_events(store: MetadataStore):
    await store.put("leader", b"old")
    events = store.watch("leader")
    first = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.5)  # let the watch establish its starting revision
    await store.put("leader", b"new")
    event = await asyncio.wait_for(first, 5)
    assert (event.kind, event.key, event.value) == ("put", "leader", b"new")
    await events.aclose()


async def test_watch_resumes_from_revision(store: MetadataStore):
    revs = [await store.put(f"jobs/{i}", str(i).encode()) for i in range(5)]
    await store.delete("jobs/0")
    watch = Collector(store.watch("jobs/", start_revision=revs[2]))
    try:
        events = await watch.wait(4)
        assert summary(events) == [("put", "jobs/2", b"2"), ("put", "jobs/3", b"3"),
                                   ("put", "jobs/4", b"4"), ("delete", "jobs/0", b"")]
        assert events[0].revision == revs[2]
        await store.put("jobs/5", b"5")
        assert summary(await watch.wait(5))[-1] == ("put", "jobs/5", b"5")
    finally:
        await watch.close()


async def test_aclose_stops_the_watch(store: MetadataStore):
    start = await store.revision() + 1
    events = store.watch("catalog", start_revision=start)
    await store.put("catalog", b"1")
    assert (await asyncio.wait_for(anext(events), 5)).value == b"1"
    await events.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(events)


async def test_watch_from_compacted_revision_fails_clearly(backend: Backend,
                                                           store: MetadataStore):
    first = await store.put("audit/1", b"x")
    for i in range(2, 6):
        await store.put(f"audit/{i}", b"x")
    await backend.compact(store)
    with pytest.raises(RevisionCompacted) as failed:
        await asyncio.wait_for(anext(store.watch("audit/", start_revision=first)), 5)
    assert isinstance(failed.value, StoreError) and "compacted" in str(failed.value)


async def test_closing_the_store_ends_its_watches(backend: Backend):
    store = await backend.open()
    watch = Collector(store.watch("catalog", start_revision=await store.revision() + 1))
    await asyncio.sleep(0.2)
    await store.close()
    await asyncio.wait_for(asyncio.shield(watch._task), 5)


# -- leases and election -----------------------------------------------------------------------


async def test_lease_expiry_deletes_keys_and_watchers_see_it(store: MetadataStore):
    lease = await store.grant_lease(LEASE_TTL)
    start = await store.revision() + 1
    watch = Collector(store.watch("routers/", start_revision=start))
    try:
        await store.put("routers/r1", b"alive", lease=lease)
        await store.put("routers/r2", b"forever")
        began = time.monotonic()
        events = await watch.wait(3, timeout=EXPIRY_WAIT)
        assert summary(events) == [("put", "routers/r1", b"alive"),
                                   ("put", "routers/r2", b"forever"),
                                   ("delete", "routers/r1", b"")]
        assert time.monotonic() - began < EXPIRY_WAIT
        assert await store.get("routers/r1") is None
        assert (await store.get("routers/r2")).value == b"forever"
        with pytest.raises(LeaseExpired):
            await lease.refresh()
        with pytest.raises(LeaseExpired):
            await store.put("routers/r1", b"zombie", lease=lease)
    finally:
        await watch.close()


async def test_lease_refresh_keeps_keys_and_revoke_deletes_them(store: MetadataStore):
    lease = await store.grant_lease(LEASE_TTL)
    start = await store.revision() + 1
    await store.put("routers/r1", b"alive", lease=lease)
    await store.put("routers/r1/meta", b"m", lease=lease)
    for _ in range(4):  # outlive the TTL by a third
        await asyncio.sleep(LEASE_TTL / 3)
        await lease.refresh()
    assert (await store.get("routers/r1")).value == b"alive"
    await lease.revoke()
    assert await store.list("routers") == []
    watch = Collector(store.watch("routers", start_revision=start))
    try:
        events = await watch.wait(4)
        assert sorted(summary(events[2:])) == [("delete", "routers/r1", b""),
                                               ("delete", "routers/r1/meta", b"")]
    finally:
        await watch.close()
    await lease.revoke()  # revoking twice is harmless


async def test_try_acquire_election(backend: Backend, store: MetadataStore):
    other = await backend.open()
    first = await store.grant_lease(LEASE_TTL)
    second = await other.grant_lease(30)
    assert await store.try_acquire("leader", "manager-a", first) is True
    assert await other.try_acquire("leader", "manager-b", second) is False
    assert (await other.get("leader")).value == b"manager-a"
    deadline = time.monotonic() + EXPIRY_WAIT
    while not await other.try_acquire("leader", "manager-b", second):
        assert time.monotonic() < deadline, "first lease never expired"
        await asyncio.sleep(0.1)
    assert (await store.get("leader")).value == b"manager-b"
    assert await store.try_acquire("leader", "manager-a", await store.grant_lease(30)) is False
    await second.revoke()


# -- failures ----------------------------------------------------------------------------------


async def test_unreachable_server_is_unavailable_quickly(backend: Backend):
    began = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await open_store(backend.down_url, cluster=backend.cluster, timeout=2)
    assert time.monotonic() - began < 5


async def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(ValueError, match="unsupported metadata store URL scheme 'redis'"):
        await open_store("redis://secret@127.0.0.1:6379")


async def test_etcd_tries_each_endpoint(etcd_server: EtcdServer):
    url = f"etcd://127.0.0.1:{free_port()},{etcd_server.endpoint}"
    store = await open_store(url, cluster=f"t{uuid.uuid4().hex[:12]}")
    try:
        rev = await store.put("catalog", b"x")
        assert (await store.get("catalog")).revision == rev
    finally:
        await store.close()


async def test_watch_survives_server_restart(restartable: Backend):
    writer = await restartable.open()
    watcher = await restartable.open()
    start = await writer.revision() + 1
    watch = Collector(watcher.watch("catalog", start_revision=start))
    try:
        for i in range(3):
            await writer.put(f"catalog/{i}", b"before")
        await watch.wait(3)

        if restartable.name == "sqlite":
            # An embedded store has no server: "restart" is closing and re-opening the file.
            await writer.close()
            writer = await restartable.open()
        else:
            await restartable.stop()
            began = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await writer.put("catalog/down", b"x")
            assert time.monotonic() - began < 5
            assert await writer.ping() is False
            await asyncio.sleep(0.5)  # let the watch notice and start retrying
            await restartable.start()
        for i in range(3, 6):
            await put_until_up(writer, f"catalog/{i}", b"after")
        await writer.delete("catalog/0")
        events = await watch.wait(7, timeout=20)
        assert summary(events) == (
            [("put", f"catalog/{i}", b"before") for i in range(3)]
            + [("put", f"catalog/{i}", b"after") for i in range(3, 6)]
            + [("delete", "catalog/0", b"")])
        revisions = [e.revision for e in events]
        assert revisions == sorted(set(revisions))
        await asyncio.sleep(1.2)  # a duplicate would show up by the next safety-net poll
        assert len(watch.events) == 7
    finally:
        await watch.close()
