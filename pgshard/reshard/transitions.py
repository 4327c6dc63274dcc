"""The catalog changes a resharding job makes, pure: each takes the current catalog and
returns the changed one, or None when it is made already (a retried step after a crash)."""

from __future__ import annotations

from pgshard.reshard.job import Job, JobError
from pgshard.ring.catalog import Catalog


def flipped(cat: Catalog, job: Job) -> Catalog | None:
    """Ownership to the new ring, the job's fences gone (the flip)."""
    if cat.ring == job.new_ring and not any(f.job == job.id for f in cat.fences):
        return None   # done already (a crash after the CAS)
    if cat.ring != job.old_ring:
        raise JobError("the ring changed since the job was planned")
    return cat.evolve(ring=job.new_ring, fences=tuple(f for f in cat.fences if f.job != job.id))


def finished(cat: Catalog, job: Job) -> Catalog | None:
    """After cleanup: the job's shards read unfiltered again; a merged-away source leaves."""
    changes = {}
    if set(cat.filter_reads) & job.shards:
        changes["filter_reads"] = tuple(set(cat.filter_reads) - job.shards)
    if job.kind == "merge" and job.source in cat.shard_names() \
            and job.source not in cat.ring.shards():
        changes["shards"] = tuple(s for s in cat.shards if s.name != job.source)
        changes["ring"] = cat.ring.without_shard(job.source)
    return cat.evolve(**changes) if changes else None


def fence_lifted(cat: Catalog, job: Job) -> Catalog | None:
    """A job rolled back: its fences gone."""
    if not any(f.job == job.id for f in cat.fences):
        return None
    return cat.evolve(fences=tuple(f for f in cat.fences if f.job != job.id))


def reads_unfiltered(cat: Catalog, job: Job) -> Catalog | None:
    """A job rolled back: its shards read unfiltered again."""
    if set(cat.filter_reads) & job.shards:
        return cat.evolve(filter_reads=tuple(set(cat.filter_reads) - job.shards))
    return None
