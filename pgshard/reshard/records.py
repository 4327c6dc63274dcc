"""Resharding jobs in the metadata store: one JSON record per job under `jobs/<id>`, each
write a compare-and-swap on the record's revision."""

from __future__ import annotations

import json
from collections.abc import Callable

from pgshard.reshard.job import FINAL_STATES, Job, JobError
from pgshard.store import CasFailed, MetadataStore

JOBS_PREFIX = "jobs"
CAS_RETRIES = 10


class JobStore:
    def __init__(self, store: MetadataStore):
        self.store = store
        # {key: (revision, job)}: a record read again unchanged is not decoded again (a job
        # holds two rings of every vnode; progress polls read it many times a second).
        self._decoded: dict[str, tuple[int, Job]] = {}

    @staticmethod
    def key(job_id: str) -> str:
        return f"{JOBS_PREFIX}/{job_id}"

    async def get(self, job_id: str) -> tuple[Job, int] | None:
        if not job_id or "/" in job_id:
            return None
        kv = await self.store.get(self.key(job_id))
        if kv is None:
            return None
        return self._decode(kv), kv.revision

    async def list(self) -> list[Job]:
        """Every job, oldest first."""
        jobs = [self._decode(kv) for kv in await self.store.list(JOBS_PREFIX)]
        return sorted(jobs, key=lambda j: (j.created_at, j.id))

    def _decode(self, kv) -> Job:
        hit = self._decoded.get(kv.key)
        if hit is not None and hit[0] == kv.revision:
            return hit[1]
        job = Job.from_json(json.loads(kv.value))
        if len(self._decoded) > 1000:
            self._decoded.clear()
        self._decoded[kv.key] = (kv.revision, job)
        return job

    async def active(self) -> list[Job]:
        return [j for j in await self.list() if j.state not in FINAL_STATES]

    async def create(self, job: Job) -> Job:
        await self.store.put(self.key(job.id), _encode(job), expect_revision=0)
        return job

    async def update(self, job_id: str, change: Callable[[Job], Job]) -> Job:
        """Apply `change` to the stored job and CAS the result."""
        for _ in range(CAS_RETRIES):
            got = await self.get(job_id)
            if got is None:
                raise JobError(f"job {job_id} does not exist", status=404)
            job, revision = got
            new = change(job)
            try:
                await self.store.put(self.key(job_id), _encode(new), expect_revision=revision)
            except CasFailed:
                continue
            return new
        raise JobError(f"job {job_id} kept changing concurrently; retry")


def _encode(job: Job) -> bytes:
    return json.dumps(job.to_json(), separators=(",", ":")).encode()
