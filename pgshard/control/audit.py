"""The audit trail: every mutating REST call (who, what, on what, result, when) written to
the store under `audit/<seq>` and as one JSON log line. Never passwords or tokens."""

from __future__ import annotations

import itertools
import json
import logging
import time

from pgshard.store import MetadataStore, StoreError

PREFIX = "audit"
log = logging.getLogger("pgshard.audit")


class AuditLog:
    def __init__(self, store: MetadataStore, node_id: str, retention: int = 10_000):
        self.store = store
        self.node_id = node_id
        self.retention = retention
        self._counter = itertools.count(1)
        self._since_prune = 0

    async def record(self, *, actor: str, role: str | None, action: str, target: str | None,
                     result: str, status: int, detail: str | None = None,
                     remote: str | None = None) -> dict:
        """Write one record (store and log). A store outage loses only the store copy."""
        now = time.time()
        n = next(self._counter)
        # Sortable by time across sidecars, unique per node: <ns>-<node>-<n>.
        seq = f"{time.time_ns():020d}-{self.node_id[-12:]}-{n:06d}"
        rec = {"seq": seq, "time": _iso(now), "actor": actor, "role": role, "action": action,
               "target": target, "result": result, "status": status, "node": self.node_id}
        if detail:
            rec["detail"] = detail
        if remote:
            rec["remote"] = remote
        log.info("audit %s %s by %s: %s", action, target or "-", actor, result,
                 extra={"audit": rec})
        try:
            await self.store.put(f"{PREFIX}/{seq}", json.dumps(rec).encode())
            self._since_prune += 1
            if self._since_prune >= 500:
                self._since_prune = 0
                await self._prune()
        except StoreError as exc:
            log.warning("audit record %s not stored: %s", seq, exc)
        return rec

    async def list(self, limit: int = 100, actor: str | None = None,
                   action: str | None = None) -> list[dict]:
        """The newest records first, optionally filtered."""
        out = []
        for kv in reversed(await self.store.list(PREFIX)):
            rec = json.loads(kv.value)
            if actor is not None and rec.get("actor") != actor:
                continue
            if action is not None and rec.get("action") != action:
                continue
            out.append(rec)
            if len(out) >= limit:
                break
        return out

    async def _prune(self) -> None:
        kvs = await self.store.list(PREFIX)
        for kv in kvs[:max(0, len(kvs) - self.retention)]:
            await self.store.delete(kv.key)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
