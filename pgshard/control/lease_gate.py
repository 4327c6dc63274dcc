"""A router whose registration lease may have lapsed stops routing: from the moment the
store could have expired its lease (and a resharding manager could count it gone and flip a
ring it never saw), it refuses new statements with SQLSTATE 57P03, naming the lost store,
until it has a lease again and has re-read the catalog.

Strategy: the membership arms the gate after every good lease grant or refresh with the
time the request was sent plus a share of the TTL; the store counts the TTL from when it
received the request, so the router always stops before the store can expire the lease.
Closing swaps the proxy's catalog for a copy with one fence over the whole ring (the same
version: the follower never takes it for a newer one), which sends every statement through
the fence gate (pgshard.proxy.fence): a statement arriving there waits up to GRACE for the
gate to open again (a late answer from the store, an event loop held up), running nowhere
meanwhile, and is then refused. Catalogs that arrive while closed are kept aside; reopening
reads the store's catalog first, then serves it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from pgshard.protocol.errors import PgError
from pgshard.ring.catalog import Catalog, Fence
from pgshard.ring.ring import MAX_TOKEN

log = logging.getLogger("pgshard.control")

LAPSED_JOB = "lease-lapsed"
SERVE_SHARE = 0.9   # of the TTL after a good refresh was sent: the router serves until then
# How long a statement arriving while closed waits for the gate to open again (a store that
# answers late, an event loop held up) before it is refused; it runs nowhere meanwhile.
GRACE = 1.0


class StoreLost(PgError, code="57P03"):
    """A statement refused by a router whose lease in the metadata store lapsed."""


def redact(url: str) -> str:
    """A store URL without its password."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    auth, _, host = rest.partition("@")
    return f"{scheme}://{auth.split(':', 1)[0]}:***@{host}"


def sentinel(catalog: Catalog) -> Catalog:
    """The catalog as served while closed: the same one with the whole ring fenced."""
    return dataclasses.replace(catalog, fences=(*catalog.fences,
                                                Fence(-1, MAX_TOKEN, LAPSED_JOB)))


class LeaseGate:
    """Whether this router may route statements, as far as its lease goes."""

    def __init__(self, proxy, store_url: str, status=None):
        self.proxy = proxy
        self.store_url = redact(store_url)
        self.status = status                 # pgshard.control.membership.StoreStatus
        self.closed_since: float | None = None
        self.real: Catalog | None = None     # what the router serves once open again
        self.reload: Callable[[], Awaitable[Catalog | None]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.on_close: Callable[[], None] | None = None   # the membership tries again at once
        self.serve_until: float | None = None   # monotonic
        self._opened = asyncio.Event()
        self._opened.set()

    @property
    def closed(self) -> bool:
        return self.closed_since is not None

    def arm(self, sent_at: float, ttl: float) -> None:
        """A lease grant or refresh sent at `sent_at` (monotonic) succeeded."""
        self.serve_until = sent_at + ttl * SERVE_SHARE
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, self.serve_until - time.monotonic()),
                                      self._expired)

    def disarm(self) -> None:
        """The process stops: no timer left behind."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        # No refresh re-armed the timer (arm cancels it): close. (Not a check of the clock:
        # the loop may run a timer a clock tick early, and it would then never close.)
        self._timer = None
        self.close()

    def close(self) -> None:
        """Stop routing (idempotent)."""
        if self.closed:
            return
        self.closed_since = time.time()
        self._closed_at = time.monotonic()
        self._opened.clear()
        self.real = self.proxy.catalog
        if self.real is not None:
            self.proxy.set_catalog(sentinel(self.real))
        log.error("the lease of this router in the metadata store %s may have lapsed: "
                  "refusing statements (57P03) until it registers again", self.store_url)
        if self.on_close is not None:
            self.on_close()

    def served(self) -> Catalog | None:
        """The catalog the router serves when open (not the closed gate's copy)."""
        return self.real if self.closed else self.proxy.catalog

    def apply(self, catalog: Catalog) -> None:
        """A newer catalog from the store: served at once if open, kept aside if closed."""
        if self.closed:
            self.real = catalog
            self.proxy.set_catalog(sentinel(catalog))
        else:
            self.proxy.set_catalog(catalog)

    async def reopen(self) -> None:
        """The lease is held again: re-read the catalog, then route again."""
        if not self.closed:
            return
        fresh = await self.reload() if self.reload is not None else None
        if fresh is not None and (self.real is None or fresh.version >= self.real.version):
            self.real = fresh
        took = time.time() - self.closed_since
        self.closed_since = None
        if self.real is not None:
            self.proxy.set_catalog(self.real)
        self._opened.set()
        log.warning("registered again in the metadata store after %.1fs; routing statements "
                    "with catalog version %s", took,
                    self.real.version if self.real is not None else "?")

    def grace_left(self) -> float:
        """Seconds a statement arriving now may still wait for the gate to open."""
        if not self.closed:
            return 0.0
        return max(0.0, self._closed_at + GRACE - time.monotonic())

    async def wait_open(self, timeout: float) -> None:
        """Until the gate is open again, or timeout seconds."""
        try:
            await asyncio.wait_for(self._opened.wait(), timeout)
        except TimeoutError:
            pass

    def error(self) -> StoreLost:
        cause = ""
        if self.status is not None and self.status.last_error:
            cause = f" ({self.status.last_error})"
        since = time.time() - (self.closed_since or time.time())
        return StoreLost(
            f"this pgshard router lost its lease in the metadata store {self.store_url}"
            f"{cause} {since:.0f}s ago: it routes no statement until it registers again, "
            "since its catalog may be stale (a resharding job may have moved ranges)",
            hint="retry shortly, or through another pgshard router")


class GateHold:
    """A statement waiting for the gate to open (held like a fence's Hold, in a
    pgshard.proxy.fence.FenceHeld decision); dispatched again after, it runs or, the grace
    spent, is refused."""

    def __init__(self, gate: LeaseGate):
        self.gate = gate

    async def wait(self) -> None:
        await self.gate.wait_open(self.gate.grace_left())
