"""A switchover's progress in the metadata store (switchovers/<shard>), and the pure rule for
what a manager that finds one half done does: finish it, roll it back, or only clean up.

Phases, in order, each written before the step it names can have effects beyond it:
  holding    the hold is being set (it may or may not be in the catalog)
  held       every router serves the hold; the old primary is untouched
  demoted    the old primary was stopped or made read-only (maybe; written just before)
  promoting  the target replayed the old primary's final WAL; pg_promote() may have run
  published  the catalog names the target and the hold is released

Until `promoting`, the old primary is the only server holding every acknowledged write and
the target is still a standby of it: bringing the old primary back and releasing the hold
is always safe. From `promoting` on, the target may be a primary on a new timeline (the old
primary could only rejoin by pg_rewind): the switchover is finished instead, which is safe
since the old primary is demoted and the target replayed all of its WAL. A target found
already promoted in an earlier phase (should not happen) is finished too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

PREFIX = "switchovers/"
PHASES = ("holding", "held", "demoted", "promoting", "published")
ROLLBACK, FINISH, CLEANUP = "rollback", "finish", "cleanup"


@dataclass(frozen=True)
class Progress:
    """One shard's switchover as last recorded by the manager running it."""

    shard: str
    from_: str          # DSN of the old primary
    to: str             # DSN of the target replica
    phase: str
    manager: str        # node id of the manager running it
    started_at: float   # wall clock (time.time()) when it began
    final_lsn: str = ""  # the old primary's last WAL position, once demoted
    demoted: str = ""    # how: "stopped" | "read-only"

    def at(self, phase: str, **changes) -> Progress:
        if phase not in PHASES:
            raise ValueError(f"unknown switchover phase {phase!r}")
        return replace(self, phase=phase, **changes)

    def to_bytes(self) -> bytes:
        data = asdict(self)
        data["from"] = data.pop("from_")
        return json.dumps(data).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Progress:
        data = json.loads(raw)
        data["from_"] = data.pop("from")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def key(shard: str) -> str:
    return PREFIX + shard


def resume_plan(phase: str, target_promoted: bool, catalog_primary: str,
                progress: Progress) -> str:
    """What a manager finding `progress` half done does (see the module docstring).

    target_promoted: the target answers as a primary; catalog_primary: the shard's primary
    in the catalog now (someone may have published already)."""
    if catalog_primary == progress.to or phase == "published":
        return CLEANUP            # published: at most the hold and the record are left
    if catalog_primary != progress.from_:
        return CLEANUP            # the shard changed primary by other means meanwhile
    if phase == "promoting" or target_promoted:
        return FINISH
    return ROLLBACK


async def save(store, progress: Progress) -> None:
    await store.put(key(progress.shard), progress.to_bytes())


async def load_all(store) -> list[Progress]:
    found = []
    for kv in await store.list(PREFIX):
        try:
            found.append(Progress.from_bytes(kv.value))
        except (ValueError, TypeError, KeyError):
            continue
    return found


async def forget(store, shard: str) -> None:
    await store.delete(key(shard))
