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
import time

from pgshard.config import dsn_address
from pgshard.control.errors import Conflict, ServiceUnavailable, Unprocessable
from pgshard.control.failover import _replace_shard, close, connect
from pgshard.control.failover_rule import PROMOTE, choose
from pgshard.control.membership import list_routers
from pgshard.proxy.replicas import parse_lsn
from pgshard.ring.catalog import Catalog

log = logging.getLogger("pgshard.failover")

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
    returns the published catalog and how long statements were held (seconds)."""
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
    held_at = time.monotonic()
    released = False
    demoted = None
    try:
        held = await _set_hold(mgr, name, f"switchover to {dsn_address(target)}")
        await _routers_applied(mgr, held.version, timeout)
        old = await connect(shard.primary)
        try:
            await _drained(old, timeout)
            demoted, final_lsn = await demote(mgr, old, shard.primary)
        finally:
            await close(old)
        await _replayed(target, final_lsn, timeout)
        log.warning("shard %s: SWITCHOVER from %s to %s (replayed %s)", name,
                    dsn_address(shard.primary), dsn_address(target), final_lsn)
        catalog = await mgr.promote_and_publish(held.shard(name), target, "switchover",
                                                "requested switchover", held_at)
        released = True
        pause = time.monotonic() - held_at
        if mgr.metrics is not None:
            mgr.metrics.failed_over(name, "switchover", pause)
    except BaseException:
        if not released:
            await _undo(mgr, name, demoted)
        raise
    finally:
        mgr.busy.pop(name, None)
    return catalog, pause


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


async def _undo(mgr, name: str, demoted) -> None:
    """A switchover that failed before publishing: bring the old primary back, release."""
    shard = mgr.proxy.catalog.shard(name)
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

    def change(cat: Catalog) -> Catalog | None:
        sh = cat.shard(name)
        return _replace_shard(cat, dataclasses.replace(sh, hold="")) if sh.hold else None

    try:
        catalog = await mgr.catalog_ops.update(change)
        mgr.apply(catalog)
    except Exception as exc:
        log.error("switchover of %s: could not release the hold: %s", name, exc)
