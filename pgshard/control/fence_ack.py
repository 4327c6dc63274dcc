"""A router's acknowledgement of resharding fences: once it serves a catalog version with
fences and the transactions it had open on the fenced ranges' shards are over, it writes
`fence_acks/<node id>` = {"version": V} (the manager waits until every live router in
`routers/` acknowledged the fence's version or a newer one).

Strategy: the held statements themselves never reach a server (pgshard.proxy.fence), so the
only writes to a fenced range still to come are those of transactions already open when the
fence arrived. Each session holding a server in a transaction (or with a statement in
flight) on a source shard is waited for until it lets go of that server or its server is
idle. A transaction that outlives fence_timeout does not delay the acknowledgement further:
its later writes to the range fail on the source's guard trigger (40001) instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from pgshard.background import Background
from pgshard.proxy import fence
from pgshard.store import MetadataStore, StoreError

log = logging.getLogger("pgshard.control")

FENCE_ACKS_PREFIX = "fence_acks"
POLL = 0.01


class FenceAcker:
    def __init__(self, store: MetadataStore, proxy, node_id: str, *, poll: float = POLL):
        self.store = store
        self.proxy = proxy
        self.node_id = node_id
        self.poll = poll
        self.acked_version = 0
        self._runner = Background(self._run, "pgshard-fence-ack")

    def start(self) -> None:
        self._runner.start()

    async def stop(self) -> None:
        await self._runner.stop()

    async def _run(self) -> None:
        while True:
            cat = self.proxy.catalog
            gate = getattr(self.proxy, "lease_gate", None)
            if gate is not None and gate.closed:
                cat = None   # routing nothing; acknowledged once open with the store's catalog
            if cat is not None and cat.fences and cat.version > self.acked_version:
                try:
                    await self.acknowledge(cat)
                except StoreError as exc:
                    log.warning("cannot acknowledge fence version %d: %s", cat.version, exc)
            await asyncio.sleep(self.poll)

    async def acknowledge(self, cat) -> None:
        """Wait for this router's open transactions on the fenced shards, then ack."""
        sources = fence.fenced_sources(cat)
        timeout = getattr(self.proxy.config.proxy, "fence_timeout", fence.DEFAULT_FENCE_TIMEOUT)
        pending = {}
        for session in list(self.proxy.clients.values()):
            s = fence.in_transaction_on(session, sources)
            if s is not None:
                pending[id(session)] = (session, s)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for key, (session, s) in list(pending.items()):
                if getattr(s, "servers", None) is not None:   # a multi-shard transaction
                    if session.txn.multi is not s:
                        del pending[key]
                elif session.server is not s or (s.txn_status == b"I" and not s.expect):
                    del pending[key]
            if pending:
                await asyncio.sleep(0.002)
        if pending:
            log.warning("acknowledging fence version %d with %d transaction(s) still open "
                        "on %s", cat.version, len(pending), ", ".join(sorted(sources)))
        await self.store.put(f"{FENCE_ACKS_PREFIX}/{self.node_id}", json.dumps(
            {"version": cat.version, "at": time.time()}).encode())
        self.acked_version = cat.version
