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
    """PAUSE/RESUME of the admin console: every pool's hold in the FailoverHold's place; the
    paused shards' (or logical databases') primary pools hand out no server until RESUME."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.inner = proxy.failover_hold
        self.everything = False
        self.shards: set[str] = set()
        self.databases: set[str] = set()   # logical databases (the main one, [[databases]])
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
        while self.paused(pool.key):
            await self._resumed.wait()
        return await self.inner.acquire(pool)

    # ---- the console's commands; a target is None (everything), ("shard", name) or
    # ("database", logical name)

    def paused(self, key) -> bool:
        return self.everything or key.shard in self.shards or (
            bool(self.databases) and self.proxy.database_of(key) in self.databases)


    def pause(self, target: tuple[str, str] | None = None) -> None:
        if target is None:
            self.everything = True
        else:
            (self.shards if target[0] == "shard" else self.databases).add(target[1])
        self._repoint()

    def resume(self, target: tuple[str, str] | None = None) -> None:
        if target is None:
            self.everything = False
            self.shards.clear()
            self.databases.clear()
        else:
            (self.shards if target[0] == "shard" else self.databases).discard(target[1])
        self._repoint()
        resumed, self._resumed = self._resumed, asyncio.Event()
        resumed.set()

    def busy(self, target: tuple[str, str] | None = None) -> int:
        """Servers of paused primary pools still in use (transactions that may finish)."""
        def hit(k) -> bool:
            if target is None:
                return True
            if target[0] == "shard":
                return k.shard == target[1]
            return self.proxy.database_of(k) == target[1]
        return sum(p.active for k, p in self.proxy.pools.items()
                   if k.role == "primary" and hit(k))

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
        pool.paused = held or self.paused(pool.key)
