"""This process in the cluster: one lease that keeps `routers/<id>` registered (with the
catalog version it serves) and, for a manager, holds the `leader` key; plus the record of
whether the store answers.

Strategy: a single lease per process, refreshed every ttl/3. When a refresh fails the process
keeps serving until the lease may lapse (pgshard.control.lease_gate: then its router refuses
statements); leadership is given up locally once the lease may have lapsed in the store
(ttl after the last good refresh), so two managers never both believe they lead. When the
store answers again the lease is refreshed, or, if it expired meanwhile, a new one is granted
and the registration (and the candidacy) is written again, after the catalog is re-read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time

from pgshard.background import Background
from pgshard.store import Lease, LeaseExpired, MetadataStore, StoreError

log = logging.getLogger("pgshard.control")

ROUTERS_PREFIX = "routers"
LEADER_KEY = "leader"


class StoreStatus:
    """Whether the store answered the last time anyone asked, and since when."""

    def __init__(self):
        self.reachable = True
        self.since = time.time()
        self.last_error: str | None = None

    def ok(self) -> None:
        if not self.reachable:
            log.warning("metadata store reachable again")
            self.reachable, self.since, self.last_error = True, time.time(), None

    def failed(self, exc: BaseException) -> None:
        self.last_error = str(exc) or type(exc).__name__
        if self.reachable:
            log.error("metadata store unreachable: %s; serving the last catalog",
                      self.last_error)
            self.reachable, self.since = False, time.time()

    def to_json(self) -> dict:
        return {"reachable": self.reachable, "since": _iso(self.since),
                "last_error": self.last_error}


class Membership:
    """Keeps `routers/<node_id>` alive and, if `campaign`, competes for `leader`."""

    def __init__(self, store: MetadataStore, status: StoreStatus, node_id: str, *,
                 role: str, ttl: float, campaign: bool, info: dict, gate=None):
        self.store = store
        self.status = status
        self.node_id = node_id
        self.role = role
        self.ttl = ttl
        self.campaign = campaign
        self.info = dict(info)
        self.gate = gate   # pgshard.control.lease_gate.LeaseGate: routing stops with the lease
        self.catalog_version: int | None = None
        self.started_at = time.time()
        self._lease: Lease | None = None
        self._leader = False
        self._last_refresh = 0.0
        self._registered_version: int | None = None
        self._wake = asyncio.Event()
        if gate is not None:
            gate.on_close = self._wake.set   # closed: try the store again at once
        self._runner = Background(self._run, "pgshard-membership")

    @property
    def is_leader(self) -> bool:
        # Past the TTL the store may have expired the lease and elected someone else.
        return self._leader and time.monotonic() - self._last_refresh < self.ttl * 0.9

    def serving(self, version: int) -> None:
        """Report a newly applied catalog version (written at once, not at the next beat)."""
        self.catalog_version = version
        self._wake.set()

    def start(self) -> None:
        self._runner.start()

    async def stop(self) -> None:
        await self._runner.stop()
        if self.gate is not None:
            self.gate.disarm()
        if self._lease is not None:
            try:
                # Revoking deletes routers/<id> and leader at once instead of after the TTL.
                await asyncio.wait_for(self._lease.revoke(), 2)
            except (StoreError, TimeoutError):
                pass
        self._leader = False

    async def beat(self) -> None:
        """One round: get a lease if needed, refresh it, register, campaign."""
        sent = time.monotonic()
        if self._lease is None:
            self._lease = await self.store.grant_lease(self.ttl)
            self._registered_version = None
            self._leader = False
        else:
            await self._lease.refresh()
        self._last_refresh = time.monotonic()
        if self.gate is not None:
            self.gate.arm(sent, self.ttl)
            # A router that stopped routing re-reads the catalog before it registers again.
            await self.gate.reopen()
        if self._registered_version != self.catalog_version or self._registered_version is None:
            await self.store.put(f"{ROUTERS_PREFIX}/{self.node_id}", self._record(),
                                 lease=self._lease)
            self._registered_version = self.catalog_version
        if self.campaign and not self._leader:
            won = await self.store.try_acquire(LEADER_KEY, self.node_id, self._lease)
            if not won:
                kv = await self.store.get(LEADER_KEY)
                # After a store outage our own key may still be there under our lease.
                won = kv is not None and kv.value.decode() == self.node_id
            if won:
                log.warning("this node (%s) is now the active manager", self.node_id)
            self._leader = won
        self.status.ok()

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except LeaseExpired:
                log.warning("lease of %s expired; registering again", self.node_id)
                if self._leader:
                    log.warning("this node (%s) is no longer the active manager", self.node_id)
                self._lease, self._leader = None, False
                if self.gate is not None:
                    self.gate.close()
                continue
            except StoreError as exc:
                self.status.failed(exc)
            except Exception:
                log.exception("membership round failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.ttl / 3)
            except TimeoutError:
                pass

    def _record(self) -> bytes:
        return json.dumps({
            "id": self.node_id, "role": self.role, "catalog_version": self.catalog_version,
            "lease_ttl": self.ttl,
            "started_at": _iso(self.started_at), "updated_at": _iso(time.time()),
            "hostname": socket.gethostname(), "pid": os.getpid(), **self.info,
        }).encode()


async def list_routers(store: MetadataStore) -> tuple[list[dict], str | None]:
    """The registered routers and the leader's id."""
    routers = [json.loads(kv.value) for kv in await store.list(ROUTERS_PREFIX)]
    kv = await store.get(LEADER_KEY)
    return routers, (kv.value.decode() if kv is not None else None)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
