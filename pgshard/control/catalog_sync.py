"""Routers follow the catalog in the store: load (or seed) it at start, watch `catalog`, and
swap the proxy's snapshot by reference on every newer version."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from pgshard.background import Background
from pgshard.control.membership import StoreStatus
from pgshard.ring.catalog import Catalog
from pgshard.store import CasFailed, MetadataStore, RevisionCompacted, StoreError

log = logging.getLogger("pgshard.control")

CATALOG_KEY = "catalog"


def decode_catalog(raw: bytes) -> Catalog:
    return Catalog.from_json(json.loads(raw))


def encode_catalog(catalog: Catalog) -> bytes:
    return json.dumps(catalog.to_json(), separators=(",", ":")).encode()


async def load_or_seed(store: MetadataStore, seed: Catalog | None) -> tuple[Catalog, int]:
    """The catalog in the store and its revision; the seed is written first if there is none."""
    for _ in range(3):
        kv = await store.get(CATALOG_KEY)
        if kv is not None:
            catalog = decode_catalog(kv.value)
            if seed is not None and seed.shard_names() != catalog.shard_names():
                log.warning("the store's catalog (version %d, shards %s) overrides the "
                            "configured shards %s", catalog.version,
                            ", ".join(catalog.shard_names()), ", ".join(seed.shard_names()))
            if seed is not None and dict(seed.tables) != dict(catalog.tables):
                log.warning("the store's catalog (version %d) declares the sharded tables %s; "
                            "the config's [[tables]] (%s) only seed a new store: change them "
                            "with `pgshard tables add/remove` or PUT /api/v1/tables/<name>",
                            catalog.version, dict(catalog.tables) or "{}",
                            dict(seed.tables) or "{}")
            return catalog, kv.revision
        if seed is None:
            raise LookupError("the metadata store holds no catalog and the config has no "
                              "[[shards]] to seed it with")
        try:
            rev = await store.put(CATALOG_KEY, encode_catalog(seed), expect_revision=0)
            log.info("seeded the store with catalog version %d from the config", seed.version)
            return seed, rev
        except CasFailed:
            continue  # another process seeded it first
    raise StoreError("could not read or seed the catalog")


class CatalogFollower:
    """Applies every newer catalog from the store to the proxy; `on_applied(catalog)` after."""

    def __init__(self, store: MetadataStore, proxy, status: StoreStatus, revision: int,
                 on_applied: Callable[[Catalog], None]):
        self.store = store
        self.proxy = proxy
        self.status = status
        self.revision = revision
        self.on_applied = on_applied
        self.applied_at = time.time()
        self._runner = Background(self._run, "pgshard-catalog-follower")

    def start(self) -> None:
        self._runner.start()

    async def stop(self) -> None:
        await self._runner.stop()

    def apply(self, raw: bytes, revision: int) -> bool:
        """Apply a catalog value read at `revision` if it is newer than the one served."""
        self.revision = max(self.revision, revision)
        try:
            catalog = decode_catalog(raw)
        except (ValueError, TypeError) as exc:
            log.error("ignoring an unreadable catalog at revision %d: %s", revision, exc)
            return False
        gate = getattr(self.proxy, "lease_gate", None)
        current = gate.served() if gate is not None else self.proxy.catalog
        if current is not None and catalog.version <= current.version:
            return False
        if gate is not None:
            gate.apply(catalog)   # kept aside while the router's lease is lapsed
        else:
            self.proxy.set_catalog(catalog)
        self.applied_at = time.time()
        log.info("applied catalog version %d (%d shards)", catalog.version, len(catalog.shards))
        self.on_applied(catalog)
        return True

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            watch = self.store.watch(CATALOG_KEY, start_revision=self.revision + 1)
            try:
                async for ev in watch:
                    backoff = 0.1
                    self.status.ok()
                    if ev.kind == "put":
                        self.apply(ev.value, ev.revision)
                    else:
                        log.error("the catalog was deleted from the store; still serving "
                                  "version %d", self.proxy.catalog.version)
                        self.revision = ev.revision
            except asyncio.CancelledError:
                raise
            except RevisionCompacted:
                log.warning("catalog watch fell behind compaction; reloading")
            except StoreError as exc:
                self.status.failed(exc)
            except Exception:
                log.exception("catalog watch failed")
            finally:
                await watch.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
            await self._reload()

    async def fetch(self) -> Catalog | None:
        """The store's catalog now (StoreError if it does not answer), also applied."""
        kv = await self.store.get(CATALOG_KEY)
        if kv is None:
            return None
        self.apply(kv.value, kv.revision)
        return decode_catalog(kv.value)

    async def _reload(self) -> None:
        try:
            kv = await self.store.get(CATALOG_KEY)
        except StoreError as exc:
            self.status.failed(exc)
            return
        self.status.ok()
        if kv is not None:
            self.apply(kv.value, kv.revision)
