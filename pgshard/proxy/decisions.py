"""The two-phase commit decision log in the metadata store: `twophase/<router>:<txn>`
records a commit decision (its shards and their prepared-transaction gids) durably before
any COMMIT PREPARED, and global transaction ids are made and read here.

Strategy: the key is written once, with compare-and-swap on its absence, by whichever
comes first: the coordinator (outcome "commit", after every PREPARE succeeded) or recovery
(outcome "abort", before it rolls back a prepared transaction it found without a
decision). So a slow coordinator and recovery can never decide differently: the loser
sees CasFailed and follows the record that won."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from pgshard.store import CasFailed, MetadataStore

PREFIX = "twophase"
GID_PREFIX = "pgshard:"
# PostgreSQL's GIDSIZE is 200 bytes including the terminating NUL.
MAX_GID_BYTES = 199
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def router_part(router_id: str) -> str:
    """A router id as it appears in gids and keys: no ':' or '/' (they separate fields)."""
    return _UNSAFE.sub("_", router_id) or "_"


def make_gid(router: str, txn_id: int, shard: str) -> str:
    """The deterministic global transaction id `pgshard:<router>:<txn>:<shard>`."""
    gid = f"{GID_PREFIX}{router_part(router)}:{int(txn_id)}:{shard}"
    if len(gid.encode()) > MAX_GID_BYTES:
        raise ValueError(f"global transaction id {gid!r} exceeds PostgreSQL's 200 bytes")
    return gid


@dataclass(frozen=True, slots=True)
class GidParts:
    """A pgshard two-phase gid split: the router that made it, its transaction id, the shard."""

    router: str
    txn_id: int
    shard: str


def parse_gid(gid: str) -> GidParts | None:
    """A gid made by make_gid, split; None for any other gid (not ours)."""
    if not gid.startswith(GID_PREFIX):
        return None
    parts = gid[len(GID_PREFIX):].split(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return GidParts(parts[0], int(parts[1]), parts[2])


def quote_gid(gid: str) -> str:
    """The gid as an SQL string literal (standard_conforming_strings: double the quotes)."""
    if "\0" in gid:
        raise ValueError("a gid cannot hold NUL")
    return "'" + gid.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class Decision:
    """One recorded decision ("commit" or "abort"): every participant's gid, by shard."""

    router: str
    txn_id: int
    gids: dict[str, str]
    decided_at: float
    outcome: str = "commit"
    revision: int = 0       # the store's revision of the record (not part of the JSON)

    @property
    def key(self) -> str:
        return decision_key(self.router, self.txn_id)

    def to_json(self) -> bytes:
        return json.dumps({"router": self.router, "txn": self.txn_id,
                           "shards": sorted(self.gids), "gids": self.gids,
                           "decided_at": self.decided_at, "outcome": self.outcome}).encode()

    @classmethod
    def from_json(cls, raw: bytes, revision: int = 0) -> Decision:
        d = json.loads(raw)
        outcome = d.get("outcome", "commit")
        if outcome not in ("commit", "abort"):
            raise ValueError(f"unknown 2PC outcome {outcome!r}")
        return cls(router=d["router"], txn_id=int(d["txn"]), gids=dict(d["gids"]),
                   decided_at=float(d["decided_at"]), outcome=outcome, revision=revision)


def decision_key(router: str, txn_id: int) -> str:
    return f"{PREFIX}/{router_part(router)}:{int(txn_id)}"


class DecisionLog:
    """Commit decisions of two-phase transactions, one key each under `twophase/`."""

    def __init__(self, store: MetadataStore):
        self.store = store

    async def record(self, router: str, txn_id: int, gids: dict[str, str], *,
                     outcome: str = "commit") -> Decision:
        """Write the decision; returns once the store has it (durable). CasFailed if a
        decision for this transaction exists already (its `current` says which)."""
        decision = Decision(router_part(router), int(txn_id), dict(gids), time.time(), outcome)
        revision = await self.store.put(decision.key, decision.to_json(), expect_revision=0)
        return Decision(decision.router, decision.txn_id, decision.gids, decision.decided_at,
                        outcome, revision)

    async def abort(self, router: str, txn_id: int, gids: dict[str, str]) -> Decision:
        """Record "abort" unless a decision exists; returns the decision that holds."""
        try:
            return await self.record(router, txn_id, gids, outcome="abort")
        except CasFailed as exc:
            if exc.current is None:   # deleted meanwhile: only after every gid was resolved
                raise
            return Decision.from_json(exc.current.value, exc.current.revision)

    async def forget(self, router: str, txn_id: int, *, revision: int | None = None) -> bool:
        """Delete the decision (every participant resolved); False if it was not there."""
        return await self.store.delete(decision_key(router, txn_id), expect_revision=revision)

    async def get(self, router: str, txn_id: int) -> Decision | None:
        kv = await self.store.get(decision_key(router, txn_id))
        return Decision.from_json(kv.value, kv.revision) if kv is not None else None

    async def all(self) -> dict[str, Decision]:
        """Every recorded decision by key (unreadable records are skipped, never guessed)."""
        out = {}
        for kv in await self.store.list(PREFIX):
            try:
                d = Decision.from_json(kv.value, kv.revision)
            except (ValueError, KeyError, TypeError):
                continue
            out[d.key] = d
        return out
