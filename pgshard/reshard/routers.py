"""What a resharding job waits for from the routers: that every live router (listed under
`routers/`) serves a catalog version, or acknowledged a fence version
(`fence_acks/<node id>`, written by pgshard.control.fence_ack)."""

from __future__ import annotations

import asyncio
import json
import time

from pgshard.control.fence_ack import FENCE_ACKS_PREFIX
from pgshard.control.membership import list_routers
from pgshard.reshard.job import JobError
from pgshard.store import MetadataStore

POLL = 0.02


async def wait_acks(store: MetadataStore, version: int, timeout: float) -> None:
    """Until every live router acknowledged fence version `version` (or a newer one)."""
    deadline = time.monotonic() + timeout
    while True:
        live, _ = await list_routers(store)
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
    deadline = time.monotonic() + timeout
    while True:
        live, _ = await list_routers(store)
        behind = [r["id"] for r in live if (r.get("catalog_version") or 0) < version]
        if not behind:
            return
        if time.monotonic() > deadline:
            raise JobError(f"router(s) {', '.join(behind)} did not apply catalog version "
                           f"{version} within {timeout:g}s")
        await asyncio.sleep(POLL)
