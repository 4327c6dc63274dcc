"""A resharding job as data: its plan, where it stands, and the transitions allowed, pure.

Strategy: every step the runner takes is recorded here before the next one starts, so a
manager that dies anywhere resumes from the record. `step` names the next thing to do; each
step is idempotent (it checks what already exists), so redoing a step after a crash is safe.
The ownership flip is the point of no return: before it, cancel and failure roll back; after
it, the runner can only go forward (cleanup is retried until it succeeds).
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
from dataclasses import dataclass, field

from pgshard.ring.catalog import Catalog
from pgshard.ring.ranges import RangeMove, plan_add, plan_merge, plan_split
from pgshard.ring.ring import Ring

KINDS = ("split", "merge", "rebalance")
STATES = ("pending", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")
PHASES = ("schema", "copy", "catchup", "fence", "verify", "cleanup")

# The runner's steps in order; each maps to the phase the API shows while it runs.
STEPS = ("preconditions", "schema", "capture", "copy", "catchup", "fence", "final_catchup",
         "verify", "flip", "cleanup", "finish")
STEP_PHASE = {"preconditions": "schema", "schema": "schema", "capture": "copy",
              "copy": "copy", "catchup": "catchup", "fence": "fence",
              "final_catchup": "fence", "verify": "verify", "flip": "verify",
              "cleanup": "cleanup", "finish": "cleanup"}
FLIP_INDEX = STEPS.index("flip")


class JobError(Exception):
    """A job request or transition that is not allowed; `status` is the HTTP status."""

    def __init__(self, message: str, status: int = 409, **extra):
        super().__init__(message)
        self.status = status
        self.extra = extra


@dataclass(frozen=True)
class Job:
    """One resharding job as persisted under `jobs/<id>`."""

    id: str
    kind: str
    source: str | None
    target: str
    moves: tuple[RangeMove, ...]
    old_ring: Ring
    new_ring: Ring
    state: str = "pending"
    step: str = "preconditions"
    cancel_requested: bool = False
    rows_copied: int = 0
    rows_total: int = 0
    lag_bytes: int = 0
    copied: tuple[str, ...] = ()          # "<source>/<table>" (in a [[databases]] database:
                                          # "<source>/<dbname>/<table>") copies complete
    # The [[databases]] databases (their names on the shards) whose rows move too, besides
    # the shard DSNs' own database: the ring is one for all of them.
    databases: tuple[str, ...] = ()
    fence_version: int | None = None      # the catalog version that put up the fence
    fence_started: float | None = None    # wall-clock time the fence went up
    write_pause_ms: float | None = None
    error: str | None = None
    rollback_step: str | None = None      # set while rolling back: what remains to undo
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @property
    def sources(self) -> tuple[str, ...]:
        """The shards rows move from, sorted."""
        return tuple(sorted({m.src for m in self.moves}))

    @property
    def shards(self) -> frozenset[str]:
        """Every shard the job touches."""
        return frozenset({*self.sources, self.target})

    @property
    def flipped(self) -> bool:
        """Whether the catalog already names the new owners (no rollback past this)."""
        return STEPS.index(self.step) > FLIP_INDEX or self.state == "done"

    @property
    def phase(self) -> str | None:
        """The phase the API shows: null unless running (pending shows its first)."""
        if self.state in FINAL_STATES:
            return None
        return STEP_PHASE[self.step]

    @property
    def slot(self) -> str:
        """The name of the job's replication slot and publication on each source."""
        return f"pgshard_{self.id}"

    def slot_in(self, database: str | None) -> str:
        """The slot (and publication) in one database of a source (slot names are one
        namespace per server; None: the shard DSN's own database)."""
        if database is None:
            return self.slot
        return f"{self.slot}_{hashlib.md5(database.encode()).hexdigest()[:8]}"

    @staticmethod
    def copy_key(src: str, database: str | None, table: str) -> str:
        return f"{src}/{table}" if database is None else f"{src}/{database}/{table}"

    def moves_from(self, src: str) -> tuple[RangeMove, ...]:
        return tuple(m for m in self.moves if m.src == src)

    # -- transitions (pure: each returns a new Job) ------------------------------------

    def advance(self, step: str, **changes) -> Job:
        """The job moved on to `step` (forward only; the same step to record progress)."""
        if self.state in FINAL_STATES:
            raise JobError(f"job {self.id} is {self.state}")
        if self.rollback_step is not None:
            raise JobError(f"job {self.id} is rolling back")
        if STEPS.index(step) < STEPS.index(self.step):
            raise JobError(f"job {self.id} cannot go back from {self.step} to {step}")
        changes.setdefault("error", None)   # a step that succeeds clears a retried error
        return self._with(state="running", step=step, **changes)

    def request_cancel(self) -> Job:
        if self.state in FINAL_STATES:
            raise JobError(f"job {self.id} is already {self.state}")
        if STEPS.index(self.step) >= FLIP_INDEX:
            raise JobError(f"job {self.id} already flipped ownership; it can only finish")
        return self._with(cancel_requested=True)

    def start_rollback(self, error: str | None) -> Job:
        """Undo everything: cancel (error None) or failure before the flip."""
        if self.flipped:
            raise JobError(f"job {self.id} flipped ownership; it cannot roll back")
        return self._with(rollback_step="rollback", error=error if error else self.error)

    def finish_rollback(self) -> Job:
        state = "cancelled" if self.cancel_requested and self.error is None else "failed"
        return self._with(state=state, rollback_step=None)

    def done(self) -> Job:
        return self._with(state="done", step="finish")

    def note_error(self, error: str) -> Job:
        """An error after the flip: recorded, retried (the job stays running)."""
        return self._with(error=error)

    def _with(self, **changes) -> Job:
        return dataclasses.replace(self, updated_at=time.time(), **changes)

    # -- JSON ----------------------------------------------------------------------------

    def to_json(self) -> dict:
        """The persisted record (everything the runner needs to resume)."""
        return {
            "id": self.id, "kind": self.kind, "source": self.source, "target": self.target,
            "moves": [[m.lo, m.hi, m.src, m.dst] for m in self.moves],
            "old_ring": self.old_ring.to_json(), "new_ring": self.new_ring.to_json(),
            "state": self.state, "step": self.step, "cancel_requested": self.cancel_requested,
            "rows_copied": self.rows_copied, "rows_total": self.rows_total,
            "lag_bytes": self.lag_bytes, "copied": list(self.copied),
            "databases": list(self.databases),
            "fence_version": self.fence_version, "fence_started": self.fence_started,
            "write_pause_ms": self.write_pause_ms, "error": self.error,
            "rollback_step": self.rollback_step,
            "created_at": self.created_at, "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, data: dict) -> Job:
        d = dict(data)
        d["moves"] = tuple(RangeMove(*m) for m in d["moves"])
        d["old_ring"] = Ring.from_json(d["old_ring"])
        d["new_ring"] = Ring.from_json(d["new_ring"])
        d["copied"] = tuple(d.get("copied", ()))
        d["databases"] = tuple(d.get("databases", ()))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def view(self) -> dict:
        """The job as the REST API shows it."""
        return {
            "id": self.id, "kind": self.kind, "source": self.source, "target": self.target,
            "state": self.state, "phase": self.phase,
            "progress": {"rows_copied": self.rows_copied, "rows_total": self.rows_total,
                         "lag_bytes": self.lag_bytes},
            "write_pause_ms": self.write_pause_ms, "error": self.error,
            "cancel_requested": self.cancel_requested,
            # Flat copies of the progress, as the web console's Jobs page reads them.
            "rows_copied": self.rows_copied, "rows_total": self.rows_total,
            "lag_bytes": self.lag_bytes,
            "write_pause_seconds": (None if self.write_pause_ms is None
                                    else self.write_pause_ms / 1000),
            "moves": len(self.moves), "sources": list(self.sources),
            "databases": list(self.databases),
            "created_at": _iso(self.created_at), "updated_at": _iso(self.updated_at),
        }


def plan(catalog: Catalog, kind: str, source: str | None, target: str,
         job_id: str | None = None, databases: tuple[str, ...] = ()) -> Job:
    """A new pending job for a request, checked against the catalog (JobError if refused)."""
    if kind not in KINDS:
        raise JobError(f"kind must be one of {', '.join(KINDS)}", status=422)
    names = catalog.shard_names()
    for name in (source, target):
        if name is not None and name not in names:
            raise JobError(f'shard "{name}" does not exist', status=404)
    ring, owning = catalog.ring, catalog.ring.shards()
    if kind == "rebalance":
        if source is not None:
            raise JobError("a rebalance names only its target", status=422)
        if target in owning:
            raise JobError(f'shard "{target}" already owns vnodes; a rebalance fills a shard '
                           "that owns none")
        new_ring, moves = plan_add(ring, target, catalog.vnodes_per_shard)
    else:
        if source is None:
            raise JobError(f"a {kind} needs a source shard", status=422)
        if source == target:
            raise JobError("source and target are the same shard", status=422)
        if source not in owning:
            raise JobError(f'shard "{source}" owns no vnodes; there is nothing to move')
        if kind == "split":
            if target in owning:
                raise JobError(f'shard "{target}" already owns vnodes; a split moves half of '
                               "the source to a shard that owns none")
            new_ring, moves = plan_split(ring, source, target)
        else:
            if target not in owning:
                raise JobError(f'shard "{target}" owns no vnodes; merge into a serving shard')
            new_ring, moves = plan_merge(ring, source, target)
    if not moves:
        raise JobError("the plan moves nothing")
    return Job(id=job_id or new_id(), kind=kind, source=source, target=target,
               moves=tuple(moves), old_ring=ring, new_ring=new_ring,
               databases=tuple(databases))


def new_id() -> str:
    """A job id: short, lowercase, usable inside a replication slot name."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(3)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
