"""PAUSE and RESUME of the admin console: a gate in front of the proxy's FailoverHold, so a
paused shard's primary pools hand out no server (not even an idle one) until RESUME; a
transaction that already holds its server goes on and can finish.

Strategy: the gate takes the FailoverHold's place as every pool's `hold` (pools call
hold.acquire when no idle server is handed out), marks the paused shards' pools `paused`
(so idle servers are not handed out either) and puts that mark back after every catalog
change, which the FailoverHold recomputes from the catalog's switchover holds.
"""

from __future__ import annotations

import asyncio


class PauseGate:
    def __init__(self, proxy):
        self.proxy = proxy
        self.inner = proxy.failover_hold
        self.everything = False
        self.shards: set[str] = set()
        self._resumed = asyncio.Event()
        proxy.failover_hold = self
        self._repoint()

    @classmethod
    def of(cls, proxy) -> PauseGate:
        gate = getattr(proxy, "admin_pause", None)
        if gate is None:
            gate = proxy.admin_pause = cls(proxy)
        return gate

    def __getattr__(self, name):      # counters and the rest: the FailoverHold's own
        return getattr(self.inner, name)

    # ---- what the proxy calls on its hold

    def adopt(self, pool, shard) -> None:
        self.inner.adopt(pool, shard)
        pool.hold = self
        self._mark(pool)

    def catalog_changed(self, old, new) -> None:
        self.inner.catalog_changed(old, new)
        self._repoint()

    async def acquire(self, pool):
        while self.paused(pool.key.shard):
            await self._resumed.wait()
        return await self.inner.acquire(pool)

    # ---- the console's commands

    def paused(self, shard: str) -> bool:
        return self.everything or shard in self.shards

    def pause(self, shard: str | None = None) -> None:
        if shard is None:
            self.everything = True
        else:
            self.shards.add(shard)
        self._repoint()

    def resume(self, shard: str | None = None) -> None:
        if shard is None:
            self.everything = False
            self.shards.clear()
        else:
            self.shards.discard(shard)
        self._repoint()
        resumed, self._resumed = self._resumed, asyncio.Event()
        resumed.set()

    def busy(self, shard: str | None = None) -> int:
        """Servers of paused primary pools still in use (transactions that may finish)."""
        return sum(p.active for k, p in self.proxy.pools.items()
                   if k.role == "primary" and (shard is None or k.shard == shard))

    def _repoint(self) -> None:
        for pool in self.proxy.pools.values():
            if pool.hold is self.inner:
                pool.hold = self
            self._mark(pool)

    def _mark(self, pool) -> None:
        if pool.key.role != "primary":
            return
        cat = self.proxy.catalog
        held = False
        if cat is not None and pool.key.shard in cat.shard_names():
            held = bool(cat.shard(pool.key.shard).hold)
        pool.paused = held or self.paused(pool.key.shard)
