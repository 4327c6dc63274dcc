"""What a resharding job waits for from the routers: that every live router (listed under
`routers/`) serves a catalog version, or acknowledged a fence version
(`fence_acks/<node id>`, written by pgshard.control.fence_ack).

A router cut off from the store neither acknowledges nor leaves the list until its lease
expires in the store; by then it has stopped routing (pgshard.control.lease_gate), so it is
counted gone only once its lease is over, never before. Each wait lasts at least as long
as the longest lease of a listed router (plus a margin), so such a router is waited out
rather than failing the job."""

from __future__ import annotations

import asyncio
import json
import time

from pgshard.control.fence_ack import FENCE_ACKS_PREFIX
from pgshard.control.membership import list_routers
from pgshard.reshard.job import JobError
from pgshard.store import MetadataStore

POLL = 0.02


LEASE_MARGIN = 1.0


def _extend(deadline: float, started: float, live: list[dict]) -> float:
    """The deadline, pushed past the lease of every listed router."""
    ttl = max((r.get("lease_ttl") or 0 for r in live), default=0)
    return max(deadline, started + ttl + LEASE_MARGIN) if ttl else deadline


async def wait_acks(store: MetadataStore, version: int, timeout: float) -> None:
    """Until every live router acknowledged fence version `version` (or a newer one)."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        live, _ = await list_routers(store)
        deadline = _extend(deadline, started, live)
        missing = []
        for r in live:
            kv = await store.get(f"{FENCE_ACKS_PREFIX}/{r['id']}")
            acked = json.loads(kv.value).get("version", 0) if kv is not None else 0
            if acked < version:
                missing.append(r["id"])
        if not missing:
            return
        if time.monotonic() > deadline:
            raise JobError(f"router(s) {', '.join(missing)} did not acknowledge the fence "
                           f"(catalog version {version}) within {timeout:g}s")
        await asyncio.sleep(POLL)


async def wait_serving(store: MetadataStore, version: int, timeout: float) -> None:
    """Until every live router serves catalog version `version` or a newer one."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        live, _ = await list_routers(store)
        deadline = _extend(deadline, started, live)
        behind = [r["id"] for r in live if (r.get("catalog_version") or 0) < version]
        if not behind:
            return
        if time.monotonic() > deadline:
            raise JobError(f"router(s) {', '.join(behind)} did not apply catalog version "
                           f"{version} within {timeout:g}s")
        await asyncio.sleep(POLL)
