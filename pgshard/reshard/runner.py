"""The manager's resharding service: accepts job requests, and, while this process is the
elected manager, drives each active job step by step (schema, capture, copy, catch-up,
fence, final catch-up, verify, flip, cleanup), persisting the job after every step.

Strategy (fencing): the fence is a catalog version that lists the moving ranges; every live
router holds new statements on them and acknowledges once its open transactions on the
source shards are done (pgshard.control.fence_ack). Then a guard trigger goes on each
source table that refuses writes to the moving ranges (40001), so even a router that never
saw the fence (partitioned, its lease lapsing) cannot write a row the final catch-up would
miss. Creating the trigger takes a lock that waits for writers on the table, which also
makes any transaction still open on the source finish first. Only then is the source's
current LSN the final target: nothing in the moving ranges can commit on the source after it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

from pgshard.background import Background
from pgshard.reshard import capture, routers, tables, verify
from pgshard.reshard import copy as rows
from pgshard.reshard import job as jobs
from pgshard.reshard import sqltext as q
from pgshard.reshard.apply import Applier
from pgshard.reshard.apply import run as apply_statements
from pgshard.reshard.connections import Connections
from pgshard.reshard.job import Job, JobError
from pgshard.reshard.records import JobStore
from pgshard.reshard.transitions import fence_lifted, finished, flipped, reads_unfiltered
from pgshard.ring.catalog import Catalog, Fence
from pgshard.store import MetadataStore, StoreError

log = logging.getLogger("pgshard.reshard")

# Where rows move from: a source shard and a database on it (None: the one its DSN names).
Place = tuple[str, str | None]

POLL_INTERVAL = 0.5
CATCHUP_LAG_BYTES = 512 * 1024   # the lag below which the fence goes up
CATCHUP_MAX_ROUNDS = 2000
ACK_TIMEOUT = 15.0
GUARD_LOCK_TIMEOUT = "2s"
RETRY_DELAY = 1.0

PERMANENT = (JobError, asyncpg.PostgresError, ValueError, LookupError)
# Retried as they are: a shard restarting or unreachable, a lock not granted in time.
TRANSIENT = (OSError, TimeoutError, asyncpg.InterfaceError, StoreError,
             asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
             asyncpg.LockNotAvailableError, asyncpg.AdminShutdownError)


class ReshardService:
    """Job requests (REST) and the runner (leader only)."""

    def __init__(self, store: MetadataStore, catalog_ops, is_leader: Callable[[], bool], *,
                 poll: float = POLL_INTERVAL, ack_timeout: float = ACK_TIMEOUT,
                 databases: Callable[[], tuple[str, ...]] = tuple):
        self.store = store
        self.jobs = JobStore(store)
        self.catalog_ops = catalog_ops
        self.is_leader = is_leader
        self.poll = poll
        self.ack_timeout = ack_timeout
        # The [[databases]] dbnames whose rows a new job moves too (read at its creation).
        self.databases = databases
        self._runner = Background(self._run, "pgshard-reshard")
        self._wake = asyncio.Event()
        self.running: dict[str, Job] = {}   # the jobs this runner drives, for /metrics
        # Per job, for the length of one drive(): {(source, database, table): primary keys
        # of the moving rows changed since that table's verified copy (None: all of them)}.
        self._fresh: dict[str, dict[tuple, set | None]] = {}

    def start(self) -> None:
        self._runner.start()

    async def stop(self) -> None:
        await self._runner.stop()

    # -- requests --------------------------------------------------------------------

    async def create(self, kind: str, source: str | None, target: str) -> Job:
        """A new job, checked (JobError 404/409/422) and persisted as pending."""
        catalog, _ = await self.catalog_ops.current()
        job = jobs.plan(catalog, kind, source, target, databases=tuple(self.databases()))
        for other in await self.jobs.active():
            if other.shards & job.shards:
                raise JobError(f"job {other.id} ({other.kind}) is still {other.state} on "
                               f"shards {', '.join(sorted(other.shards & job.shards))}",
                               job=other.id)
        async with Connections(catalog) as conns:
            await self._check_target(conns, job, await self._describe(conns, job, catalog))
        await self.jobs.create(job)
        log.info("resharding job created", extra={"job": job.id, "kind": kind,
                                                  "source": source, "target": target})
        self._wake.set()
        return job

    async def cancel(self, job_id: str) -> Job:
        job = await self.jobs.update(job_id, lambda j: j.request_cancel())
        self._wake.set()
        return job

    # -- the runner --------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                if self.is_leader():
                    for job in await self.jobs.active():
                        await self.drive(job.id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("resharding round failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll)
            except TimeoutError:
                pass

    async def drive(self, job_id: str) -> Job:
        """Run one job as far as it goes: to a final state, or until leadership is lost or a
        transient error (retried on a later round)."""
        got = await self.jobs.get(job_id)
        if got is None:
            raise JobError(f"job {job_id} does not exist", status=404)
        job = got[0]
        catalog, _ = await self.catalog_ops.current()
        # What this drive saw since each copy is known only within it (another manager may
        # apply changes between two drives of ours): an interrupted job verifies in full.
        self._fresh.pop(job_id, None)
        try:
            return await self._drive(job, catalog)
        finally:
            self._fresh.pop(job_id, None)

    async def _drive(self, job: Job, catalog: Catalog) -> Job:
        job_id = job.id
        async with Connections(catalog) as conns:
            while job.state not in jobs.FINAL_STATES and self.is_leader():
                job = (await self.jobs.get(job_id))[0]   # a cancel may have come in
                try:
                    if job.rollback_step is not None:
                        job = await self._rollback(conns, job)
                        continue
                    if job.step == "flip" and await self._flip_landed(job):
                        # The flip's CAS landed before a crash or error: only forward now.
                        job = await self._advance(job, "cleanup")
                        continue
                    if job.cancel_requested and not job.flipped:
                        job = await self._save(job.start_rollback(None))
                        continue
                    job = await self._step(conns, job)
                except TRANSIENT as exc:
                    log.warning("job %s: %s failed (%s); retrying", job.id, job.step, exc)
                    conns.reset()
                    if not job.flipped:
                        job = await self._save(job.note_error(f"{job.step}: {exc}"))
                    await asyncio.sleep(RETRY_DELAY)
                    return job
                except PERMANENT as exc:
                    msg = f"{job.step}: {exc}"
                    if job.flipped or job.rollback_step is not None:
                        log.error("job %s: %s; retrying", job.id, msg)
                        job = await self._save(job.note_error(msg))
                        await asyncio.sleep(RETRY_DELAY)
                        return job
                    if job.step == "flip" and await self._flip_landed(job):
                        continue   # forward from here (the loop moves on to the cleanup)
                    log.error("job %s failed: %s; rolling back", job.id, msg)
                    job = await self._save(job.start_rollback(msg))
        return job

    async def _flip_landed(self, job: Job) -> bool:
        cat, _ = await self.catalog_ops.current()
        return cat.ring == job.new_ring and not any(f.job == job.id for f in cat.fences)

    async def _save(self, new: Job) -> Job:
        def change(stored: Job) -> Job:
            # Keep a cancel request that arrived while the step ran.
            if stored.cancel_requested and not new.cancel_requested:
                return dataclasses.replace(new, cancel_requested=True)
            return new

        saved = await self.jobs.update(new.id, change)
        if saved.state in jobs.FINAL_STATES:
            self.running.pop(saved.id, None)
        else:
            self.running[saved.id] = saved
        return saved

    async def _advance(self, job: Job, step: str, **changes) -> Job:
        before = job.phase
        job = await self._save(job.advance(step, **changes))
        if job.phase != before:
            log.info("resharding job %s: phase %s", job.id, job.phase,
                     extra={"job": job.id, "phase": job.phase, "step": job.step})
        return job

    async def _step(self, conns: Connections, job: Job) -> Job:
        step: Callable[[Connections, Job], Awaitable[Job]] = getattr(self, f"_{job.step}")
        t0 = time.monotonic()
        out = await step(conns, job)
        log.debug("job %s: step %s took %.3fs", job.id, job.step, time.monotonic() - t0)
        return out

    # -- steps ---------------------------------------------------------------------------

    async def _describe(self, conns, job: Job, catalog: Catalog | None = None
                        ) -> dict[Place, dict[str, tables.TableInfo]]:
        """{(source, database): {table: info}}, checking the preconditions on every source,
        for each place that has sharded tables: the shard DSNs' own database (database None,
        where every sharded table must exist) and each of the job's [[databases]] present on
        the source (its tables that exist there)."""
        catalog = catalog or (await self.catalog_ops.current())[0]
        out = {}
        for src in job.sources:
            for db in (None, *job.databases):
                if not await conns.has_database(src, db):
                    continue   # not on this shard: no rows of it to move
                conn = await conns.get(src, db)
                where = src if db is None else f"{src} (database {db})"
                got = {}
                for t, key in catalog.tables:
                    if db is not None and not await tables.exists(conn, t):
                        continue   # a table this database does not have
                    got[t] = await tables.describe(conn, t, key, where)
                if got or db is None:
                    out[(src, db)] = got
        return out

    async def _check_target(self, conns, job: Job, infos) -> None:
        """The target answers and has every database whose sharded tables move."""
        await conns.get(job.target)
        for db in sorted({db for (_, db), got in infos.items() if db is not None and got}):
            if not await conns.has_database(job.target, db):
                raise JobError(f'database "{db}" holds sharded tables on the source but does '
                               f"not exist on target shard {job.target}: create it there "
                               "first", database=db)

    async def _preconditions(self, conns, job: Job) -> Job:
        catalog, _ = await self.catalog_ops.current()
        if catalog.ring != job.old_ring:
            raise JobError("the ring changed since the job was planned")
        await self._check_target(conns, job, await self._describe(conns, job, catalog))
        return await self._advance(job, "schema")

    async def _schema(self, conns, job: Job) -> Job:
        infos = await self._describe(conns, job)
        for db in (None, *job.databases):
            dst = None
            for (src, sdb), got in infos.items():
                if sdb != db or not got:
                    continue
                if dst is None:
                    dst = await conns.get(job.target, db)
                    await tables.install_hash(dst)
                for table in got:
                    await tables.copy_definition(await conns.get(src, db), dst, table)
            if db is None and dst is None:
                await tables.install_hash(await conns.get(job.target))
        return await self._advance(job, "capture")

    async def _capture(self, conns, job: Job) -> Job:
        # From the copy on, a row of a moving range is on two shards: fan-out reads must ask
        # each of them only for the ranges it owns, on every router, before any row is copied.
        catalog = await self.catalog_ops.update(
            lambda cat: None if job.shards <= set(cat.filter_reads)
            else cat.evolve(filter_reads=(*cat.filter_reads, *job.shards)))
        await self._wait_routers(catalog.version)
        total = 0
        for (src, db), got in (await self._describe(conns, job, catalog)).items():
            if not got:
                continue
            conn = await conns.get(src, db)
            await capture.start(conn, job.slot_in(db), list(got))
            for t in got:
                total += await self._estimate(conn, job, src, t)
        return await self._advance(job, "copy", rows_total=total)

    @staticmethod
    async def _estimate(conn, job: Job, src: str, table: str) -> int:
        """About how many of the table's rows on src lie in the ranges moving from it (the
        planner's row count times the ranges' share of src's tokens)."""
        share = sum(m.size for m in job.moves_from(src)) / max(
            sum(r.size for r in job.old_ring.ranges(src)), 1)
        est = await conn.fetchval("SELECT greatest(reltuples, 0)::bigint FROM pg_class "
                                  "WHERE oid = $1::regclass", q.qualified(table))
        return int((est or 0) * share)

    async def _copy(self, conns, job: Job) -> Job:
        infos = await self._describe(conns, job)
        for (src, db), got in infos.items():
            dst = await conns.get(job.target, db) if got else None
            for table, info in got.items():
                done_key = Job.copy_key(src, db, table)
                if done_key in job.copied:
                    continue
                if (await self.jobs.get(job.id))[0].cancel_requested:
                    return job
                # A token index on the source keeps the copy and the verifications short.
                spans = job.moves_from(src)
                conn = await conns.get(src, db)
                t0 = time.monotonic()
                await tables.ensure_token_index(conn, table, info.key, job.id)
                log.debug("job %s: token index on %s took %.3fs", job.id, done_key,
                          time.monotonic() - t0)
                t0 = time.monotonic()
                # The copy is checked against the very snapshot it was read from, outside the
                # fence (inside it only the rows changed since need checking): both sides'
                # totals at once, one pass over each table (the destination has no token
                # index: hashing its rows once costs less than indexing them). A split's
                # target holds nothing but this copy (it owned no range, only this job's one
                # source writes to it, nothing is applied before the copy is checked): its
                # whole table is summed, with no hash at all.
                whole = job.kind == "split"
                n, at_copy, at_dst = await rows.copy_rows(
                    conn, dst, info, spans, indexed=True,
                    est_rows=await self._estimate(conn, job, src, table),
                    summarize=lambda c, info=info, spans=spans: verify.total(c, info, spans, True),
                    alongside=lambda info=info, spans=spans, dst=dst, whole=whole: verify.total(
                        dst, info, None if whole else spans))
                log.debug("job %s: %s copied %d rows and checked both sides in %.3fs",
                          job.id, done_key, n, time.monotonic() - t0)
                problems = verify.total_mismatch(info, at_copy, at_dst, whole)
                if problems:
                    raise JobError("the copy does not match the source: " +
                                   "; ".join(problems[:5]))
                self._fresh.setdefault(job.id, {})[(src, db, table)] = set()
                job = await self._advance(job, "copy", copied=(*job.copied, done_key),
                                          rows_copied=job.rows_copied + n)
        return await self._advance(job, "catchup",
                                   rows_total=max(job.rows_total, job.rows_copied))

    async def _apply_round(self, conns, job: Job, infos, upto: dict[str, int] | None) -> bool:
        """One batch from every source's slot applied; True when each source is caught up
        (below the lag threshold, or at its upto LSN)."""
        caught_up = True
        lag_total = 0
        for (src, db), got in infos.items():
            if not got:
                continue
            conn, dst, slot = await conns.get(src, db), await conns.get(job.target, db), \
                job.slot_in(db)
            batch = await capture.read(conn, slot, upto.get(src) if upto else None)
            applier = Applier(got.values(), job.moves_from(src))
            statements = applier.statements(batch.events)
            fresh = self._fresh.get(job.id)
            for table, keys in applier.touched.items():
                k = (src, db, table)
                if fresh is not None and fresh.get(k) is not None:
                    fresh[k] = None if keys is None else fresh[k] | keys
            await apply_statements(dst, statements)
            if batch.end_lsn is not None:
                await capture.advance(conn, slot, batch.end_lsn)
            if upto is not None:
                if batch.end_lsn is not None and batch.end_lsn < upto[src]:
                    caught_up = False
            else:
                lag = await capture.lag_bytes(conn, slot)
                lag_total += lag
                if batch.end_lsn is not None and len(batch.events) >= capture.BATCH_CHANGES:
                    caught_up = False
                if lag > CATCHUP_LAG_BYTES:
                    caught_up = False
        if upto is None:
            await self._save(job.advance(job.step, lag_bytes=lag_total))
        return caught_up

    async def _catchup(self, conns, job: Job) -> Job:
        infos = await self._describe(conns, job)
        for _ in range(CATCHUP_MAX_ROUNDS):
            if (await self.jobs.get(job.id))[0].cancel_requested or not self.is_leader():
                return job
            if await self._apply_round(conns, job, infos, None):
                return await self._advance(job, "fence")
            job = (await self.jobs.get(job.id))[0]
        raise JobError("change capture could not catch up with the source's writes")

    async def _fence(self, conns, job: Job) -> Job:
        fences = tuple(Fence(m.lo, m.hi, job.id) for m in job.moves)
        started = job.fence_started or time.time()

        def put_up(cat: Catalog) -> Catalog | None:
            if any(f.job == job.id for f in cat.fences):
                return None
            if cat.ring != job.old_ring:
                raise JobError("the ring changed since the job was planned")
            return cat.evolve(fences=(*cat.fences, *fences))

        catalog = await self.catalog_ops.update(put_up)
        job = await self._advance(job, "fence", fence_version=catalog.version,
                                  fence_started=started)
        await self._wait_acks(catalog.version)
        infos = await self._describe(conns, job)
        for (src, db), got in infos.items():
            if not got:
                continue
            conn = await conns.get(src, db)
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{GUARD_LOCK_TIMEOUT}'")
                await conn.execute(q.guard_function(job.id, job.moves_from(src)))
                for info in got.values():
                    await conn.execute(q.drop_guard(info.name, job.id))
                    await conn.execute(q.create_guard(info.name, info.key, job.id))
        return await self._advance(job, "final_catchup")

    async def _wait_acks(self, version: int) -> None:
        await routers.wait_acks(self.store, version, self.ack_timeout)

    async def _wait_routers(self, version: int) -> None:
        await routers.wait_serving(self.store, version, self.ack_timeout)

    async def _final_catchup(self, conns, job: Job) -> Job:
        infos = await self._describe(conns, job)
        upto = {src: await capture.flush_wal(await conns.get(src)) for src in job.sources}
        for _ in range(CATCHUP_MAX_ROUNDS):
            if await self._apply_round(conns, job, infos, upto):
                break
        else:
            raise JobError("the final catch-up did not reach the source's LSN")
        return await self._advance(job, "verify", lag_bytes=0)

    async def _verify(self, conns, job: Job) -> Job:
        infos = await self._describe(conns, job)
        problems = await verify.job_problems(conns, job, infos, self._fresh.get(job.id) or {})
        if problems:
            raise JobError("verification failed: " + "; ".join(problems[:5]))
        return await self._advance(job, "flip")

    async def _flip(self, conns, job: Job) -> Job:
        if (await self.jobs.get(job.id))[0].cancel_requested:
            return job
        await self.catalog_ops.update(lambda cat: flipped(cat, job))
        pause = None
        if job.fence_started is not None:
            pause = round((time.time() - job.fence_started) * 1000, 1)
        log.info("resharding job %s flipped ownership", job.id,
                 extra={"job": job.id, "write_pause_ms": pause})
        return await self._advance(job, "cleanup", write_pause_ms=pause)

    async def _cleanup(self, conns, job: Job) -> Job:
        # The guard stays until every router routes by the flipped ring: a router still on
        # the old one would otherwise write moved keys to the source, out of every reader's
        # reach.
        await self._wait_routers((await self.catalog_ops.current())[0].version)
        infos = await self._describe(conns, job)
        for (src, db), got in infos.items():
            conn = await conns.get(src, db)
            for info in got.values():
                t0 = time.monotonic()
                n = await rows.delete_rows(conn, info, job.moves_from(src), bypass_guard=True,
                                           job_id=job.id,
                                           est_rows=await self._estimate(conn, job, src,
                                                                         info.name))
                log.debug("job %s: deleted %d moved rows of %s from %s in %.3fs", job.id, n,
                          info.name, src, time.monotonic() - t0)
                await conn.execute(q.drop_guard(info.name, job.id))
                await conn.execute(q.drop_token_index(info.name, job.id))
                await (await conns.get(job.target, db)).execute(
                    q.drop_token_index(info.name, job.id))
            await conn.execute(q.drop_guard_function(job.id))
            await capture.stop(conn, job.slot_in(db))

        await self.catalog_ops.update(lambda cat: finished(cat, job))
        return await self._advance(job, "finish")

    async def _finish(self, conns, job: Job) -> Job:
        job = await self._save(job.done())
        log.info("resharding job %s done", job.id, extra={"job": job.id, "state": job.state})
        return job

    async def _rollback(self, conns, job: Job) -> Job:
        """Undo a job that did not flip: fence lifted, guards, slots and publications
        dropped, copied rows deleted from the destination. Idempotent."""
        await self.catalog_ops.update(lambda cat: fence_lifted(cat, job))
        catalog, _ = await self.catalog_ops.current()
        for src in job.sources:
            for db in (None, *job.databases):
                if not await conns.has_database(src, db):
                    continue
                conn = await conns.get(src, db)
                dst = (await conns.get(job.target, db)
                       if await conns.has_database(job.target, db) else None)
                for table, key in catalog.tables:
                    if await tables.exists(conn, table):
                        await conn.execute(q.drop_guard(table, job.id))
                        await conn.execute(q.drop_token_index(table, job.id))
                    if dst is not None and await tables.exists(dst, table):
                        info = tables.TableInfo(table, key, (), (), ())
                        await rows.delete_rows(dst, info, job.moves_from(src), job_id=job.id)
                        await dst.execute(q.drop_token_index(table, job.id))
                await conn.execute(q.drop_guard_function(job.id))
                await capture.stop(conn, job.slot_in(db))
        await self.catalog_ops.update(lambda cat: reads_unfiltered(cat, job))
        job = await self._save(job.finish_rollback())
        log.warning("resharding job %s %s", job.id, job.state,
                    extra={"job": job.id, "state": job.state, "error": job.error})
        return job
