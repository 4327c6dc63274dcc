"""Planned switchover of a shard's primary: hold its statements on every router, let the
old primary's in-flight work finish, demote it, wait until the chosen replica replayed all
of its WAL, promote that replica, publish, release the hold.

Strategy: the hold is a catalog field (Shard.hold) that every router's pools honour (they
hand out no server for the shard, and statements wait in acquire). The manager waits until
every registered router reports the hold's catalog version, then until the old primary runs
no client statement and no open transaction (what a router holds when the hold starts is
allowed to finish). Demotion stops a harness-managed primary (its shutdown streams the last
WAL to the replicas) or makes any other one read-only and ends its sessions. Only then is
the target's replay position compared with the old primary's final WAL position, so
nothing acknowledged is lost and no client statement fails; statements waited instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time

from pgshard.config import dsn_address
from pgshard.control import switchover_state as state
from pgshard.control.errors import Conflict, ServiceUnavailable, Unprocessable
from pgshard.control.failover import _replace_shard, close, connect
from pgshard.control.failover_rule import PROMOTE, choose
from pgshard.control.membership import list_routers
from pgshard.control.switchover_state import Progress
from pgshard.proxy.replicas import parse_lsn
from pgshard.ring.catalog import Catalog

log = logging.getLogger("pgshard.failover")

# Test fault hook: the process SIGKILLs itself right after recording this phase.
FAULT_ENV = "PGSHARD_FAULT_SWITCHOVER_PHASE"

POLL = 0.02
# Client work on the old primary that must end before it is demoted (pgshard's own
# monitor and manager connections excepted).
BUSY_SQL = """\
SELECT count(*) FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
   AND application_name NOT IN ('pgshard-replica-monitor', 'pgshard-manager')
   AND (state = 'active' OR state LIKE 'idle in transaction%')
"""
READ_ONLY_SQL = """\
ALTER SYSTEM SET default_transaction_read_only = on
"""
TERMINATE_SQL = """\
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


async def switchover(mgr, name: str, to: str | None) -> tuple[Catalog, float]:
    """Switch shard `name` to replica `to` (default: the most caught-up healthy replica);
    returns the published catalog and how long statements were held (seconds).

    Each phase is recorded in the store first (switchover_state), so a manager that takes
    over after this one died finishes or rolls back what it finds (resume)."""
    if name in mgr.busy:
        raise Conflict(f'shard "{name}" is busy: {mgr.busy[name]}')
    shard = mgr.proxy.catalog.shard(name)
    facts = mgr.facts(shard)
    if not facts.primary.reachable:
        raise Unprocessable(f'shard "{name}": its primary {dsn_address(shard.primary)} does '
                            "not answer; use failover instead")
    d = choose(facts, to=to, caught_up=True)
    if d.action != PROMOTE:
        raise Unprocessable(f'shard "{name}": {d.reason}')
    target = d.candidate
    mgr.busy[name] = "switchover"
    timeout = mgr.ha.switchover_timeout
    store = mgr.catalog_ops.store
    held_at = time.monotonic()
    released = False
    demoted = None
    progress = Progress(name, shard.primary, target, "holding", _node_id(mgr), time.time())
    try:
        await _phase(mgr, progress)
        held = await _set_hold(mgr, name, f"switchover to {dsn_address(target)}")
        await _routers_applied(mgr, held.version, timeout)
        await _phase(mgr, progress := progress.at("held"))
        fault("held")
        old = await connect(shard.primary)
        try:
            await _drained(old, timeout)
            await _phase(mgr, progress := progress.at("demoted"))
            demoted, final_lsn = await demote(mgr, old, shard.primary)
        finally:
            await close(old)
        fault("demoted")
        await _replayed(target, final_lsn, timeout)
        await _phase(mgr, progress := progress.at("promoting", final_lsn=final_lsn,
                                                   demoted=demoted))
        log.warning("shard %s: SWITCHOVER from %s to %s (replayed %s)", name,
                    dsn_address(shard.primary), dsn_address(target), final_lsn)
        catalog = await mgr.promote_and_publish(held.shard(name), target, "switchover",
                                                "requested switchover", held_at,
                                                promoted=lambda: fault("promoting"))
        released = True
        fault("published")
        await _forget_quietly(store, name)  # left behind, a new leader only cleans it up
        pause = time.monotonic() - held_at
        if mgr.metrics is not None:
            mgr.metrics.failed_over(name, "switchover", pause)
    except BaseException:
        if not released and _leads(mgr):
            if await _undo(mgr, name, demoted):
                await _forget_quietly(store, name)
        raise
    finally:
        mgr.busy.pop(name, None)
    return catalog, pause


def _node_id(mgr) -> str:
    return getattr(mgr.membership, "node_id", "")


def _leads(mgr) -> bool:
    return bool(mgr.membership.is_leader)


async def _phase(mgr, progress: Progress) -> None:
    """Record the phase, only while this manager leads: one that lost the lease leaves the
    switchover to the new leader."""
    if not _leads(mgr):
        raise ServiceUnavailable(f'shard "{progress.shard}": this manager lost the leader '
                                 f"lease during the switchover ({progress.phase}); the new "
                                 "manager finishes or rolls it back")
    await state.save(mgr.catalog_ops.store, progress)


def fault(phase: str) -> None:
    """Test fault hook: SIGKILL this process once the step of `phase` had its effect
    ($PGSHARD_FAULT_SWITCHOVER_PHASE = held: hold set and applied; demoted: old primary
    demoted; promoting: target promoted, catalog not flipped; published: catalog flipped,
    progress record not yet deleted)."""
    if os.environ.get(FAULT_ENV) == phase:
        log.error("%s=%s: killing this process (test fault)", FAULT_ENV, phase)
        os.kill(os.getpid(), signal.SIGKILL)


async def _forget_quietly(store, name: str) -> None:
    try:
        await state.forget(store, name)
    except Exception as exc:
        log.error("switchover of %s: could not delete its progress record: %s", name, exc)


async def resume(mgr, progress: Progress) -> str:
    """Finish or roll back a switchover another manager left half done (resume_plan says
    which); the hold is released either way. Returns what was done."""
    name = progress.shard
    catalog = mgr.proxy.catalog
    if name not in catalog.shard_names():
        await state.forget(mgr.catalog_ops.store, name)
        return state.CLEANUP
    if name in mgr.busy:
        raise Conflict(f'shard "{name}" is busy: {mgr.busy[name]}')
    mgr.busy[name] = "switchover resume"
    try:
        shard = catalog.shard(name)
        promoted = await _is_primary(progress.to)
        plan = state.resume_plan(progress.phase, promoted, shard.primary, progress)
        log.warning("shard %s: switchover %s -> %s left at phase %r by manager %s: %s",
                    name, dsn_address(progress.from_), dsn_address(progress.to),
                    progress.phase, progress.manager or "?", plan.upper())
        if plan == state.FINISH:
            await _finish(mgr, shard, progress, promoted)
        elif plan == state.ROLLBACK:
            if not await _undo(mgr, name, progress.phase in ("demoted", "promoting")
                               or None):
                return "rollback incomplete"  # the record stays: retried next round
        else:
            await _release(mgr, name)
        await state.forget(mgr.catalog_ops.store, name)
        return plan
    finally:
        mgr.busy.pop(name, None)


async def _is_primary(dsn: str) -> bool:
    try:
        conn = await connect(dsn)
    except Exception:
        return False
    try:
        return not await conn.fetchval("SELECT pg_is_in_recovery()")
    finally:
        await close(conn)


async def _finish(mgr, shard, progress: Progress, promoted: bool) -> None:
    """Promote the target (if not yet) and publish, like the switchover would have."""
    if progress.phase != "promoting":
        # Promoted early (by whom?): make sure the old primary no longer takes writes.
        await mgr._demote_if_alive(progress.from_)
    if not promoted and progress.final_lsn:
        await _replayed(progress.to, progress.final_lsn, mgr.ha.switchover_timeout)
    catalog = await mgr.promote_and_publish(
        shard, progress.to, "switchover",
        f"switchover resumed by {_node_id(mgr) or 'a new manager'} after manager "
        f"{progress.manager or '?'} stopped at phase {progress.phase}",
        time.monotonic() - max(0.0, time.time() - progress.started_at))
    if mgr.metrics is not None:
        mgr.metrics.failed_over(shard.name, "switchover", time.time() - progress.started_at)
    log.warning("shard %s: switchover finished (catalog version %d)", shard.name,
                catalog.version)


async def _set_hold(mgr, name: str, why: str) -> Catalog:
    def change(cat: Catalog) -> Catalog:
        sh = cat.shard(name)
        if sh.hold:
            raise Conflict(f'shard "{name}" is already held: {sh.hold}')
        return _replace_shard(cat, dataclasses.replace(sh, hold=why))

    catalog = await mgr.catalog_ops.update(change)
    mgr.apply(catalog)
    return catalog


async def _routers_applied(mgr, version: int, timeout: float) -> None:
    """Every live router serves `version` (or a later one)."""
    deadline = time.monotonic() + timeout
    while True:
        routers, _ = await list_routers(mgr.catalog_ops.store)
        behind = [r.get("id") for r in routers if (r.get("catalog_version") or 0) < version]
        if not behind:
            return
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"routers {behind} did not apply catalog version {version} "
                                     f"within {timeout:g}s; switchover cancelled")
        await asyncio.sleep(POLL)


async def _drained(conn, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await conn.fetchval(BUSY_SQL):
        if time.monotonic() > deadline:
            log.warning("switchover: client work still runs on the old primary after %gs; "
                        "demoting anyway", timeout)
            return
        await asyncio.sleep(POLL)


async def demote(mgr, conn, dsn: str) -> tuple[str, str]:
    """Stop the old primary (harness) or make it read-only; (how, its final WAL position)."""
    node = mgr.local_node(dsn)
    if node is not None:
        lsn = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
        # A fast shutdown sends every WAL record, its shutdown checkpoint last, to the
        # connected standbys before it exits.
        await asyncio.to_thread(node.stop, "fast")
        return "stopped", lsn
    await conn.execute(READ_ONLY_SQL)
    await conn.execute("SELECT pg_reload_conf()")
    await conn.fetchval(TERMINATE_SQL)
    lsn = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
    return "read-only", lsn


async def _replayed(dsn: str, lsn: str, timeout: float) -> None:
    target = parse_lsn(lsn)
    conn = await connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            got = await conn.fetchval("SELECT pg_last_wal_replay_lsn()::text")
            if got is not None and parse_lsn(got) >= target:
                return
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"{dsn_address(dsn)} replayed only {got} of {lsn} "
                                         f"within {timeout:g}s")
            await asyncio.sleep(POLL)
    finally:
        await close(conn)


async def _undo(mgr, name: str, demoted) -> bool:
    """A switchover that failed before publishing: bring the old primary back, release the
    hold. False when the old primary could not be brought back (the hold is released all
    the same: a dead primary is then failed over like any other)."""
    shard = mgr.proxy.catalog.shard(name)
    back = True
    try:
        if demoted is not None:
            node = mgr.local_node(shard.primary)
            if node is not None:
                await asyncio.to_thread(node.start)
            else:
                conn = await connect(shard.primary)
                try:
                    await conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
                    await conn.execute("SELECT pg_reload_conf()")
                finally:
                    await close(conn)
    except Exception as exc:
        log.error("switchover of %s: could not bring the old primary back: %s", name, exc)
        back = False
    return await _release(mgr, name) and back


async def _release(mgr, name: str) -> bool:
    """Clear the shard's hold in the catalog (if set)."""
    def change(cat: Catalog) -> Catalog | None:
        sh = cat.shard(name)
        return _replace_shard(cat, dataclasses.replace(sh, hold="")) if sh.hold else None

    try:
        catalog = await mgr.catalog_ops.update(change)
        mgr.apply(catalog)
        return True
    except Exception as exc:
        log.error("switchover of %s: could not release the hold: %s", name, exc)
        return False
