"""Routers during a failover: statements for a shard whose primary is down (or being
changed) are held, not failed, until the catalog names a primary that answers, for up to
failover_hold seconds; then they fail with 08006 naming the shard.

Strategy: the hold lives in the pool's acquire path, so every way a session reaches a
primary (a keyed statement, a fan-out, a held-back BEGIN) waits the same way. A pool
whose shard the catalog marks `hold` (a switchover in progress) hands out nothing, not
even idle servers; a pool whose connects fail keeps retrying while the shard has a
replica that a failover could promote. When a new catalog moves a shard's primary, the
pools to the old address are closed and a successor pool for the same key takes over, so
statements already waiting are released to the new primary.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pgshard.config import dsn_address, parse_dsn
from pgshard.protocol.errors import ConnectionFailure, PgError
from pgshard.ring.catalog import Catalog, Shard

log = logging.getLogger("pgshard.proxy")

# Seconds between connect attempts to a primary that is down while statements wait.
RETRY_INTERVAL = 0.25
# Errors of a server that is going away or not accepting connections yet.
_DOWN_STATES = frozenset({"57P01", "57P02", "57P03"})


class ShardUnavailable(ConnectionFailure):
    """A shard's primary stayed unavailable for the whole failover hold (SQLSTATE 08006)."""


def _down(exc: PgError) -> bool:
    return isinstance(exc, ConnectionFailure) or exc.sqlstate in _DOWN_STATES \
        or exc.sqlstate.startswith("08")


def _role_dsn(shard: Shard, role: str) -> str | None:
    if role == "primary":
        return shard.primary
    try:
        return shard.replicas[int(role.split(":", 1)[1])]
    except (IndexError, ValueError):
        return None


class FailoverHold:
    """One per Proxy: holds primary acquisitions through failovers and switchovers."""

    def __init__(self, proxy, hold_seconds: float):
        self.proxy = proxy
        self.hold_seconds = hold_seconds
        self._changed = asyncio.Event()
        self.waiting = 0     # acquisitions held now
        self.released = 0    # held acquisitions that got a server
        self.expired = 0     # held acquisitions that failed after the hold

    # ------------------------------------------------------------ pools

    def adopt(self, pool, shard: Shard) -> None:
        """Set up a pool the proxy just made for shard."""
        pool.hold = self
        pool.paused = bool(shard.hold) and pool.key.role == "primary"

    def catalog_changed(self, old: Catalog | None, new: Catalog) -> None:
        """Close pools to servers that no longer serve their role (a successor takes over a
        moved primary's key), pause or resume pools of held shards, wake held statements."""
        pools = self.proxy.pools
        names = set(new.shard_names())
        for key, pool in list(pools.items()):
            if key.shard not in names:
                continue
            shard = new.shard(key.shard)
            dsn = _role_dsn(shard, key.role)
            try:
                target = parse_dsn(dsn) if dsn is not None else None
            except ValueError:
                target = None
            if target is None or (target.host, target.port) != (pool.host, pool.port):
                pool.close()
                del pools[key]
                if key.role == "primary" and target is not None:
                    pools[key] = successor = self._successor(pool, old, key, target)
                    log.warning("shard %s: primary moved to %s; pools to %s:%s closed",
                                key.shard, dsn_address(dsn), pool.host, pool.port)
                    self.adopt(successor, shard)
                continue
            pool.paused = bool(shard.hold) and key.role == "primary"
        self._wake()

    def _successor(self, pool, old: Catalog | None, key, target):
        from pgshard.proxy.pool import BackendPool

        password = pool.password
        if old is not None and key.shard in old.shard_names():
            try:
                if parse_dsn(old.shard(key.shard).primary).password == pool.password:
                    password = target.password  # the DSN's credentials, not a user's own
            except ValueError:
                pass
        return BackendPool(key, target.host, target.port, password, pool.settings)

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _wait(self, timeout: float) -> None:
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), max(0.0, timeout))
        except TimeoutError:
            pass

    # ------------------------------------------------------------ acquire

    async def acquire(self, pool):
        """A server for pool's key, holding while the shard's primary is down or changing."""
        deadline: float | None = None
        current = pool
        held = False
        try:
            while True:
                catalog = self.proxy.catalog
                shard = catalog.shard(pool.key.shard) if catalog is not None else None
                current = self.proxy.pools.get(pool.key, current)
                if shard is not None and shard.hold:
                    now = time.monotonic()
                    deadline = deadline or now + self.hold_seconds
                    if now >= deadline:
                        raise ShardUnavailable(
                            f'shard "{shard.name}": statements were held for '
                            f"{self.hold_seconds:g}s (failover_hold) while its primary changes "
                            f"({shard.hold}) and it did not finish",
                            hint="retry; GET /health says what the shard is doing")
                    held = self._note_held(held)
                    await self._wait(deadline - now)
                    continue
                try:
                    server = await current.acquire_direct()
                except PgError as exc:
                    if (not _down(exc) or self.hold_seconds <= 0 or shard is None
                            or not (shard.replicas or shard.hold)):
                        raise
                    now = time.monotonic()
                    deadline = deadline or now + self.hold_seconds
                    if now >= deadline:
                        raise ShardUnavailable(
                            f'shard "{shard.name}": its primary {dsn_address(shard.primary)} is '
                            f"unavailable and no failover completed within failover_hold "
                            f"({self.hold_seconds:g}s): {exc.message}",
                            hint="a replica is promoted only when its WAL receiver lost the "
                            "primary too; GET /health says what the manager sees") from None
                    held = self._note_held(held)
                    await self._wait(min(RETRY_INTERVAL, deadline - now))
                    continue
                if held:
                    self.released += 1
                return server
        except ShardUnavailable:
            self.expired += 1
            raise
        finally:
            if held:
                self.waiting -= 1

    def _note_held(self, held: bool) -> bool:
        if not held:
            self.waiting += 1
        return True
