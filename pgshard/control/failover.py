"""The elected manager's failover service: reads the replica monitor's checks every
check_interval, records which replicas are synchronous, and when the rule says a primary
failed promotes a replica (pg_promote), repoints the others, fences the old primary and
publishes the new catalog with one compare-and-swap. Only the lease holder acts."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import asyncpg

from pgshard.background import Background
from pgshard.config import HaConfig, dsn_address, parse_dsn
from pgshard.control.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable
from pgshard.control.failover_rule import (
    PROMOTE,
    REFUSE,
    Decision,
    ShardFacts,
    choose,
    decide,
    sync_members,
)
from pgshard.ring.catalog import Catalog, Failover, Shard

log = logging.getLogger("pgshard.failover")

CONNECT_TIMEOUT = 3.0
PROMOTE_WAIT = 30  # seconds pg_promote() waits for the standby to become a primary


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def conninfo(dsn: str, application_name: str | None) -> str:
    """A libpq key/value conninfo for streaming from the server at dsn."""
    d = parse_dsn(dsn)
    parts = {"host": d.host, "port": str(d.port), "user": d.user, "password": d.password}
    if application_name:
        parts["application_name"] = application_name
    return " ".join(f"{k}='" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
                    for k, v in parts.items() if v)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def connect(dsn: str) -> asyncpg.Connection:
    return await asyncio.wait_for(
        asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT, statement_cache_size=0,
                        server_settings={"application_name": "pgshard-manager"}),
        CONNECT_TIMEOUT + 1)


async def close(conn: asyncpg.Connection | None) -> None:
    if conn is None:
        return
    try:
        await asyncio.wait_for(conn.close(), 2)
    except Exception:
        conn.terminate()


class FailoverManager:
    """One per manager-capable process; acts only while `membership.is_leader`."""

    def __init__(self, ha: HaConfig, proxy, membership, catalog_ops, metrics=None):
        self.ha = ha
        self.proxy = proxy
        self.membership = membership
        self.catalog_ops = catalog_ops
        self.metrics = metrics          # pgshard.control.ha_metrics.HaMetrics, when exported
        self.busy: dict[str, str] = {}  # shard -> what is being done to it
        self.refused: dict[str, str] = {}  # shard -> why a failover is needed but refused
        self.last_decision: dict[str, Decision] = {}
        # shard -> monotonic time until which no failover is decided for it: after a
        # switchover was rolled back the monitor's last checks of its restarted primary
        # are stale failures.
        self._settle: dict[str, float] = {}
        self._runner = Background(self._run, "pgshard-failover")
        self._cluster = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._runner.start()

    async def stop(self) -> None:
        await self._runner.stop()

    @property
    def monitor(self):
        return self.proxy.replicas

    def local_cluster(self):
        """The LocalCluster whose servers this manager may stop, start and rejoin, if any."""
        if self.ha.local_cluster is None:
            return None
        if self._cluster is None:
            from pgshard.cluster import LocalCluster
            self._cluster = LocalCluster.open(self.ha.local_cluster)
        return self._cluster

    def local_node(self, dsn: str):
        cluster = self.local_cluster()
        if cluster is None:
            return None
        d = parse_dsn(dsn)
        return cluster.node_at(d.host, d.port)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.ha.check_interval)
            if not self.membership.is_leader or self.monitor is None:
                continue
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("failover round failed")

    # ------------------------------------------------------------ one round

    def facts(self, shard: Shard) -> ShardFacts:
        m = self.monitor
        return ShardFacts(shard.name, m.node_facts(shard.primary),
                          tuple(m.node_facts(r) for r in shard.replicas),
                          frozenset(shard.sync), shard.sync_quorum)

    async def round(self) -> None:
        """Check every shard once: finish or roll back a switchover another manager left
        half done, record sync standbys, fail over a failed primary."""
        await self._resume_switchovers()
        catalog = self.proxy.catalog
        for shard in catalog.shards:
            if shard.name in self.busy:
                continue
            if shard.hold:
                await self._release_stale_hold(shard)
                continue
            await self._record_sync(shard)
            if not self.ha.auto_failover or self._settle.get(shard.name, 0) > time.monotonic():
                continue
            decision = decide(self.facts(shard), self.ha.failure_threshold)
            previous = self.last_decision.get(shard.name)
            self.last_decision[shard.name] = decision
            if decision.action == PROMOTE:
                try:
                    await self.failover(shard.name, decision.candidate, decision.reason)
                except Exception as exc:
                    log.error("shard %s: failover to %s failed: %s", shard.name,
                              dsn_address(decision.candidate), exc)
                    self.refused[shard.name] = f"failover failed: {exc}"
            elif decision.action == REFUSE:
                self.refused[shard.name] = decision.reason
                # Logged when the refusal starts or its cause changes (not every round).
                if previous is None or _cause(previous.reason) != _cause(decision.reason):
                    log.error("shard %s: primary %s is down and NO replica is promoted: %s",
                              shard.name, dsn_address(shard.primary), decision.reason)
                if self.metrics is not None:
                    self.metrics.refused(shard.name)
            else:
                self.refused.pop(shard.name, None)

    async def _resume_switchovers(self) -> None:
        from pgshard.control import switchover_state
        from pgshard.control.switchover import resume

        for progress in await switchover_state.load_all(self.catalog_ops.store):
            if progress.shard in self.busy:
                continue  # ours, running
            try:
                await resume(self, progress)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("shard %s: resuming the switchover left half done failed",
                              progress.shard)
            self._settle[progress.shard] = time.monotonic() + 3 * self.ha.check_interval

    async def _release_stale_hold(self, shard: Shard) -> None:
        """A hold no operation is behind (no switchover recorded in the store: the ones
        recorded were resumed first). Release it; a dead primary is then failed over."""
        log.warning("shard %s: releasing the hold %r left by another manager", shard.name,
                    shard.hold)

        def change(cat: Catalog) -> Catalog | None:
            sh = cat.shard(shard.name)
            if not sh.hold or shard.name in self.busy:
                return None
            return _replace_shard(cat, dataclasses.replace(sh, hold=""))

        self.apply(await self.catalog_ops.update(change))

    async def _record_sync(self, shard: Shard) -> None:
        """Keep the catalog's record of the shard's synchronous standbys current (read from
        the primary's synchronous_standby_names), so a manager that takes over after the
        primary died still knows which replica may be promoted."""
        m = self.monitor
        if not shard.replicas:
            return  # nothing to observe; keep the record for replicas that rejoin
        probe = m.last_probe(shard.primary)
        if probe is None or probe.in_recovery or not m.node_facts(shard.primary).reachable:
            return
        apps = {r: (p.cluster_name if (p := m.last_probe(r)) is not None else None)
                for r in shard.replicas}
        if any(a is None for a in apps.values()):
            return  # a replica not checked yet: wait for its name
        members, quorum = sync_members(probe.sync_names, apps)
        if (tuple(members), quorum) == (shard.sync, shard.sync_quorum):
            return

        def change(cat: Catalog) -> Catalog | None:
            sh = cat.shard(shard.name)
            if sh.primary != shard.primary or (sh.sync, sh.sync_quorum) == (members, quorum):
                return None
            return _replace_shard(cat, dataclasses.replace(sh, sync=members,
                                                           sync_quorum=quorum))

        await self.catalog_ops.update(change)
        log.info("shard %s: synchronous standbys %s (ANY %d)", shard.name,
                 [dsn_address(d) for d in members] or "none", quorum)

    # ------------------------------------------------------------ operations

    async def failover(self, name: str, to: str | None, reason: str, *,
                       forced: bool = False) -> Catalog:
        """Promote `to` (or the rule's choice) in place of the shard's primary and publish."""
        if name in self.busy:
            raise Conflict(f'shard "{name}" is busy: {self.busy[name]}')
        self.busy[name] = "failover"
        started = time.monotonic()
        try:
            shard = self.proxy.catalog.shard(name)
            if to is None or forced:
                d = choose(self.facts(shard), to=to)
                if d.action != PROMOTE:
                    raise Unprocessable(f'shard "{name}": {d.reason}')
                to = d.candidate
            log.warning("shard %s: FAILOVER from %s to %s: %s", name,
                        dsn_address(shard.primary), dsn_address(to), reason)
            if forced:
                await self._demote_if_alive(shard.primary)
            catalog = await self.promote_and_publish(shard, to, "failover", reason, started)
            if self.metrics is not None:
                self.metrics.failed_over(name, "failover", time.monotonic() - started)
            self.refused.pop(name, None)
            return catalog
        finally:
            self.busy.pop(name, None)

    async def _demote_if_alive(self, dsn: str) -> None:
        """A forced failover's old primary may still run: stop it (local cluster) or make it
        read-only, so nothing keeps writing to it beside the new one (best effort)."""
        from pgshard.control.switchover import demote

        try:
            conn = await connect(dsn)
        except Exception:
            return  # down already
        try:
            how, _ = await demote(self, conn, dsn)
            log.warning("old primary %s %s", dsn_address(dsn), how)
        except Exception as exc:
            log.warning("could not demote the old primary %s: %s", dsn_address(dsn), exc)
        finally:
            await close(conn)

    async def promote_and_publish(self, shard: Shard, to: str, kind: str, reason: str,
                                  started: float, promoted=None) -> Catalog:
        """pg_promote() `to`, repoint the other replicas at it, fence the old primary and
        publish the catalog (one CAS; refused if someone changed the shard's primary).
        promoted(), if given, runs once `to` is a primary (a test fault hook)."""
        others = [r for r in shard.replicas if r != to]
        conn = await connect(to)
        try:
            if not await conn.fetchval("SELECT pg_is_in_recovery()"):
                log.warning("shard %s: %s is already a primary", shard.name, dsn_address(to))
            elif not await conn.fetchval(f"SELECT pg_promote(true, {PROMOTE_WAIT})"):
                raise ServiceUnavailable(f"{dsn_address(to)} did not finish promotion within "
                                         f"{PROMOTE_WAIT}s")
        finally:
            await close(conn)
        if promoted is not None:
            promoted()
        if shard.sync_quorum and others:
            names = [n for n in (self._app_name(r) for r in others) if n]
            await self.set_sync_standbys(to, min(shard.sync_quorum, len(names)) or 1, names)
        await asyncio.gather(*(self.repoint(r, to) for r in others), return_exceptions=True)
        record = Failover(_iso(time.time()), kind, reason, shard.primary, to,
                          round(time.monotonic() - started, 3))

        def change(cat: Catalog) -> Catalog:
            sh = cat.shard(shard.name)
            if sh.primary != shard.primary:
                raise Conflict(f'shard "{shard.name}" changed primary meanwhile')
            fenced = tuple(dict.fromkeys((*sh.fenced, sh.primary)))
            return _replace_shard(cat, dataclasses.replace(
                sh, primary=to, replicas=tuple(r for r in sh.replicas if r != to),
                fenced=fenced, hold="", last_failover=record,
                sync=tuple(r for r in sh.sync if r != to and r in others),
                # Kept without replicas too: a rejoined replica becomes synchronous again.
                sync_quorum=sh.sync_quorum))

        catalog = await self.catalog_ops.update(change)
        self.apply(catalog)
        node = self.local_node(to)
        if node is not None:
            await asyncio.to_thread(self.local_cluster().set_primary, node)
        log.warning("shard %s: %s is the primary now (catalog version %d, %.2fs)", shard.name,
                    dsn_address(to), catalog.version, record.seconds)
        return catalog

    def apply(self, catalog: Catalog) -> None:
        """Serve a catalog this manager just wrote at once (the store's watch brings it to
        the other routers), and register the version like the watch would."""
        if catalog.version > self.proxy.catalog.version:
            self.proxy.set_catalog(catalog)
            self.membership.serving(catalog.version)

    def _app_name(self, dsn: str) -> str | None:
        probe = self.monitor.last_probe(dsn) if self.monitor is not None else None
        return probe.cluster_name if probe is not None else None

    async def set_sync_standbys(self, primary: str, quorum: int, names: list[str]) -> str:
        """synchronous_standby_names = 'ANY quorum (names)' on the primary, in force when
        this returns; returns the primary's WAL position at that point.

        Strategy: commits wait for standbys only once the checkpointer has read the reloaded
        setting (it publishes "sync standbys defined" to the backends); until then they are
        acknowledged asynchronously. So after the reload, wait until a new session sees the
        setting, then run a CHECKPOINT (the checkpointer handles a pending reload before a
        requested checkpoint). Every commit acknowledged without waiting lies before the
        returned position: a standby that has received WAL up to it holds them all."""
        setting = (f"ANY {quorum} (" + ", ".join('"' + n.replace('"', '""') + '"'
                                                 for n in names) + ")") if names else ""
        conn = await connect(primary)
        try:
            await conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = "
                               f"{_literal(setting)}")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await close(conn)
        deadline = time.monotonic() + 10
        while True:
            conn = await connect(primary)
            try:
                if await conn.fetchval("SELECT current_setting('synchronous_standby_names')") \
                        == setting or time.monotonic() > deadline:
                    await conn.execute("CHECKPOINT")
                    return await conn.fetchval("SELECT pg_current_wal_lsn()::text")
            finally:
                await close(conn)
            await asyncio.sleep(0.05)

    async def received(self, replica: str, lsn: str, timeout: float = 30) -> None:
        """Wait until the replica has received (flushed) WAL up to lsn."""
        from pgshard.proxy.replicas import parse_lsn

        target = parse_lsn(lsn)
        conn = await connect(replica)
        try:
            deadline = time.monotonic() + timeout
            while True:
                got = await conn.fetchval("SELECT pg_last_wal_receive_lsn()::text")
                if got is not None and parse_lsn(got) >= target:
                    return
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(f"{dsn_address(replica)} received only {got} of "
                                             f"{lsn} within {timeout:g}s")
                await asyncio.sleep(0.05)
        finally:
            await close(conn)

    async def repoint(self, replica: str, primary: str) -> None:
        """Make a replica stream from `primary` (primary_conninfo + reload)."""
        try:
            conn = await connect(replica)
        except Exception as exc:
            log.warning("cannot repoint replica %s at %s: %s", dsn_address(replica),
                        dsn_address(primary), exc)
            return
        try:
            info = conninfo(primary, self._app_name(replica))
            await conn.execute(f"ALTER SYSTEM SET primary_conninfo = {_literal(info)}")
            await conn.execute("SELECT pg_reload_conf()")
            log.info("replica %s now streams from %s", dsn_address(replica),
                     dsn_address(primary))
        finally:
            await close(conn)

    async def rejoin(self, name: str, dsn: str, *, rejoined: bool = False
                     ) -> tuple[Catalog, str]:
        """Turn a fenced old primary into a streaming replica of the shard's primary and
        list it as a replica; returns the catalog and how it was rejoined.

        A server of the harness-managed cluster is rewound (or cloned) here. Any other one
        is rejoined on its own host by `pgshard node rejoin`, which then calls this with
        rejoined=True: the server is only checked (a standby of the same system, streaming
        from the shard's primary) and listed."""
        shard = self.proxy.catalog.shard(name)
        wanted = parse_dsn(dsn)
        match = next((f for f in shard.fenced
                      if (parse_dsn(f).host, parse_dsn(f).port) == (wanted.host, wanted.port)),
                     None)
        if match is None:
            raise Conflict(f"{dsn_address(dsn)} is not a fenced old primary of shard {name}",
                           fenced=[dsn_address(f) for f in shard.fenced])
        node = primary = None
        if not rejoined:
            node, primary = self.local_node(match), self.local_node(shard.primary)
            if node is None or primary is None:
                raise Unprocessable(
                    f"{dsn_address(dsn)} is not a server of the local cluster this manager "
                    "runs ([ha] local_cluster): run `pgshard node rejoin --data-dir DIR "
                    f"--primary DSN` on its host (DSN: the new primary, "
                    f"{dsn_address(shard.primary)}); it lists the server here when it streams")
        if name in self.busy:
            raise Conflict(f'shard "{name}" is busy: {self.busy[name]}')
        self.busy[name] = "rejoin"
        try:
            if rejoined:
                app = await self._check_standby(match, shard.primary)
                how = "rejoined on its host"
            else:
                how = await asyncio.to_thread(self.local_cluster().rejoin, node, primary)
                app = node.name
            log.warning("shard %s: %s rejoined as a replica (%s)", name, dsn_address(match), how)
            sync = bool(shard.sync_quorum and app)
            if sync:
                names = [n for n in (*(self._app_name(r) for r in shard.replicas), app) if n]
                # Synchronous only once it holds every commit acknowledged before the
                # primary began to wait for it (it ran alone, asynchronously, until now).
                lsn = await self.set_sync_standbys(shard.primary, shard.sync_quorum, names)
                await self.received(match, lsn)
            elif shard.sync_quorum:
                log.warning("shard %s: %s has no cluster_name, so it cannot be named in "
                            "synchronous_standby_names: listed as an asynchronous replica",
                            name, dsn_address(match))

            def change(cat: Catalog) -> Catalog:
                sh = cat.shard(name)
                # Its primary now waits for it (set above): a synchronous standby at once.
                members = tuple(dict.fromkeys((*sh.sync, match))) if sync else sh.sync
                return _replace_shard(cat, dataclasses.replace(
                    sh, fenced=tuple(f for f in sh.fenced if f != match),
                    replicas=tuple(dict.fromkeys((*sh.replicas, match))), sync=members))

            new = await self.catalog_ops.update(change)
            self.apply(new)
            return new, how
        finally:
            self.busy.pop(name, None)

    async def _check_standby(self, dsn: str, primary: str) -> str:
        """A server rejoined on its host is a standby of the primary's system, streaming
        from the primary's port; returns its cluster_name ('' if it has none)."""
        conn = await connect(dsn)
        try:
            row = await conn.fetchrow(
                "SELECT pg_is_in_recovery() AS standby, current_setting('cluster_name') AS app,"
                " (SELECT system_identifier FROM pg_control_system()) AS sysid,"
                " (SELECT status FROM pg_stat_wal_receiver) AS status,"
                " (SELECT sender_port FROM pg_stat_wal_receiver) AS port")
        finally:
            await close(conn)
        conn = await connect(primary)
        try:
            sysid = await conn.fetchval("SELECT system_identifier FROM pg_control_system()")
        finally:
            await close(conn)
        where = dsn_address(dsn)
        if not row["standby"]:
            raise Unprocessable(f"{where} is not a standby (still a primary?): rejoin it "
                                "first with `pgshard node rejoin` on its host")
        if row["sysid"] != sysid:
            raise Unprocessable(f"{where} is a standby of another system (system identifier "
                                f"{row['sysid']}, the primary's is {sysid})")
        if row["status"] != "streaming" or row["port"] != parse_dsn(primary).port:
            raise Unprocessable(f"{where} does not stream from the primary "
                                f"{dsn_address(primary)} (WAL receiver: {row['status']}, "
                                f"sender port {row['port']})")
        return row["app"] or ""


def _cause(reason: str) -> str:
    return reason.rsplit("; ", 1)[-1]


def _replace_shard(cat: Catalog, shard: Shard) -> Catalog:
    if shard.name not in cat.shard_names():
        raise NotFound(f'shard "{shard.name}" does not exist')
    return cat.evolve(shards=tuple(shard if s.name == shard.name else s for s in cat.shards))
