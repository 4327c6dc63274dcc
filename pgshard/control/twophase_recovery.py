"""Two-phase commit recovery, run by the elected manager: prepared transactions left on the
primaries (`pg_prepared_xacts`, gid `pgshard:%`) are committed or rolled back from the
decision log, and decision records nothing refers to any more are deleted.

Strategy: one round reads the decisions first, then every primary's prepared transactions.
A decision read before the scan was written after all of its PREPAREs, so a gid it names
that the later scan does not find is resolved; a decision whose every gid is resolved is
deleted (an "abort" record only after `keep_aborts`, 2 x twophase_timeout and at least
5 minutes, so a coordinator that stalled before its decision finds it and cannot record
"commit" over a rolled-back participant; coordinators give up after decision_deadline).
A gid without a decision is rolled back only when its coordinator is no longer a
registered router or it is older than twophase_timeout, and only after recording "abort"
for it with compare-and-swap: if the coordinator's "commit" got there first, it commits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from pgshard.background import Background
from pgshard.config import parse_dsn
from pgshard.control.membership import list_routers
from pgshard.proxy.decisions import (
    Decision,
    DecisionLog,
    decision_key,
    parse_gid,
    quote_gid,
    router_part,
)
from pgshard.store import MetadataStore, StoreError

log = logging.getLogger("pgshard.twophase")

LIST_SQL = ("SELECT gid, database, extract(epoch FROM now() - prepared)::float8 AS age "
            "FROM pg_prepared_xacts WHERE gid LIKE 'pgshard:%'")
CAPACITY_SQL = "SELECT current_setting('max_prepared_transactions')"
APPLICATION_NAME = "pgshard-2pc-recovery"


@dataclass(frozen=True, slots=True)
class Prepared:
    shard: str
    gid: str
    database: str
    age: float


@dataclass
class RecoveryReport:
    """What one round did (gids and decision keys), for logs and tests."""

    committed: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    in_doubt: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)


class TwoPhaseRecovery:
    """Resolves in-doubt two-phase transactions every `interval` s while `leader()`."""

    def __init__(self, store: MetadataStore, catalog: Callable[[], object], *,
                 leader: Callable[[], bool], interval: float = 10.0, timeout: float = 60.0,
                 metrics=None, connect_timeout: float = 5.0, keep_aborts: float | None = None):
        self.store = store
        self.decisions = DecisionLog(store)
        self.catalog = catalog
        self.leader = leader
        self.interval = interval
        self.timeout = timeout
        self.keep_aborts = max(2 * timeout, 300.0) if keep_aborts is None else keep_aborts
        # A decided transaction of a live router is left to it this long (its COMMIT PREPARED
        # may be on the way): ages are the shard's clock, since PREPARE.
        self.grace = min(timeout, 5.0)
        self.metrics = metrics
        self.connect_timeout = connect_timeout
        self.last: RecoveryReport | None = None
        # Primaries last seen with max_prepared_transactions = 0 (for status pages).
        self.disabled: set[str] = set()
        self._runner = Background(self._loop, "pgshard-2pc-recovery")

    def start(self) -> None:
        self._runner.start()

    async def stop(self) -> None:
        await self._runner.stop()

    async def _loop(self) -> None:
        # A round as soon as this process leads (at start or when elected), then every
        # interval while it does; leadership is looked at every second.
        last = None
        while True:
            if not self.leader():
                last = None
            elif last is None or time.monotonic() - last >= self.interval:
                last = time.monotonic()
                try:
                    await self.run_once()
                except StoreError as exc:
                    log.warning("2PC recovery round skipped: metadata store: %s", exc)
                except Exception:
                    log.exception("2PC recovery round failed")
            await asyncio.sleep(min(self.interval, 1.0))

    def warnings(self) -> list[str]:
        """What status pages should warn about: shards that cannot take part in 2PC."""
        return [f"{shard}: max_prepared_transactions = 0: a transaction that writes on it and "
                "another shard cannot commit (two-phase commit, SQLSTATE 55000); set it to at "
                "least max_connections and restart the shard" for shard in sorted(self.disabled)]

    async def run_once(self) -> RecoveryReport:
        """One reconciliation round over every primary in the catalog."""
        self._round_conns: dict[tuple[str, str], asyncpg.Connection] = {}
        try:
            return await self._round()
        finally:
            conns, self._round_conns = self._round_conns, {}
            await asyncio.gather(*(c.close() for c in conns.values()), return_exceptions=True)

    async def _round(self) -> RecoveryReport:
        report = RecoveryReport()
        decisions = await self.decisions.all()          # first: see the module's Strategy
        routers, _ = await list_routers(self.store)
        live = {router_part(str(r.get("id", ""))) for r in routers}
        catalog = self.catalog()
        primaries = {sh.name: sh.primary for sh in catalog.shards} if catalog else {}
        scans = await asyncio.gather(*(self._scan(sh, dsn) for sh, dsn in primaries.items()),
                                     return_exceptions=True)
        found: dict[str, list[Prepared]] = {}
        for sh, scan in zip(primaries, scans, strict=True):
            if isinstance(scan, BaseException):
                report.unreachable.append(sh)
                log.warning("2PC recovery cannot list prepared transactions on %s: %s", sh, scan)
            else:
                found[sh] = scan
        by_txn: dict[str, list[Prepared]] = {}
        for xacts in found.values():
            for p in xacts:
                parts = parse_gid(p.gid)
                if parts is not None:
                    by_txn.setdefault(decision_key(parts.router, parts.txn_id), []).append(p)
        resolved: set[str] = set()
        for key, xacts in by_txn.items():
            d = decisions.get(key)
            parts = parse_gid(xacts[0].gid)
            alive, age = parts.router in live, max(p.age for p in xacts)
            if d is not None and alive and age < self.grace:
                # Its coordinator is committing it right now: let it finish.
                report.in_doubt.extend(p.gid for p in xacts)
                continue
            if d is None:
                if alive and age <= self.timeout:
                    report.in_doubt.extend(p.gid for p in xacts)
                    continue
                d = await self.decisions.abort(parts.router, parts.txn_id,
                                               {p.shard: p.gid for p in xacts})
                decisions[key] = d
            for p in xacts:
                ok = await self._finish(primaries[p.shard], p, d.outcome, report)
                if ok:
                    resolved.add(p.gid)
        await self._forget(decisions, found, resolved, report)
        self._report(report, found)
        return report

    async def _scan(self, shard: str, dsn: str) -> list[Prepared]:
        conn = await self._connect(dsn)
        try:
            rows = await conn.fetch(LIST_SQL, timeout=self.connect_timeout)
            capacity = int(await conn.fetchval(CAPACITY_SQL, timeout=self.connect_timeout))
        finally:
            await conn.close()
        self._capacity(shard, capacity)
        return [Prepared(shard, r["gid"], r["database"], r["age"]) for r in rows]

    def _capacity(self, shard: str, capacity: int) -> None:
        if capacity == 0 and shard not in self.disabled:
            log.warning("shard %s runs with max_prepared_transactions = 0: a transaction that "
                        "writes on it and another shard cannot commit (two-phase commit); "
                        "set it to at least max_connections and restart the shard", shard)
            self.disabled.add(shard)
        elif capacity > 0:
            self.disabled.discard(shard)

    async def _finish(self, dsn: str, p: Prepared, outcome: str,
                      report: RecoveryReport) -> bool:
        word = "COMMIT" if outcome == "commit" else "ROLLBACK"
        where = (dsn, p.database)
        try:
            conn = self._round_conns.get(where)
            if conn is None:
                conn = self._round_conns[where] = await self._connect(dsn, p.database)
            await conn.execute(f"{word} PREPARED {quote_gid(p.gid)}",
                               timeout=self.connect_timeout)
        except asyncpg.UndefinedObjectError:
            return True   # resolved meanwhile (its coordinator finished it)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            bad = self._round_conns.pop(where, None)
            if bad is not None:
                bad.terminate()
            report.failed.append(p.gid)
            log.error("2PC recovery: %s PREPARED %s on %s failed: %s", word, p.gid, p.shard, exc)
            return False
        (report.committed if word == "COMMIT" else report.rolled_back).append(p.gid)
        log.warning("2PC recovery: %s PREPARED %s on %s (%s)", word, p.gid, p.shard,
                    "decision recorded" if word == "COMMIT" else "no commit decision")
        return True

    async def _forget(self, decisions: dict[str, Decision], found: dict[str, list[Prepared]],
                      resolved: set[str], report: RecoveryReport) -> None:
        present = {p.gid for xacts in found.values() for p in xacts} - resolved
        now = time.time()
        for key, d in decisions.items():
            if any(sh not in found or gid in present for sh, gid in d.gids.items()):
                continue
            if d.outcome == "abort" and now - d.decided_at < self.keep_aborts:
                continue
            try:
                await self.decisions.forget(d.router, d.txn_id, revision=d.revision or None)
                report.deleted.append(key)
            except StoreError as exc:
                log.warning("2PC recovery could not delete %s: %s", key, exc)

    def _report(self, report: RecoveryReport, found: dict[str, list[Prepared]]) -> None:
        self.last = report
        if self.metrics is None:
            return
        for _ in report.committed:
            self.metrics.twophase("recovered_commit")
        for _ in report.rolled_back:
            self.metrics.twophase("recovered_rollback")
        self.metrics.twophase_in_doubt(len(report.in_doubt) + len(report.failed))

    async def _connect(self, dsn: str, database: str | None = None) -> asyncpg.Connection:
        d = parse_dsn(dsn)
        return await asyncio.wait_for(asyncpg.connect(
            host=d.host, port=d.port, user=d.user, password=d.password,
            database=database or d.database, timeout=self.connect_timeout,
            statement_cache_size=0, server_settings={"application_name": APPLICATION_NAME}),
            self.connect_timeout + 1)


def set_coordinator(config, store: MetadataStore, proxy, node_id: str) -> None:
    """`proxy.twophase`: this router's Coordinator (None when two_phase_commit is off), set
    before the proxy takes its first client."""
    from pgshard.proxy.twophase import Coordinator, Faults

    pc = config.proxy
    proxy.twophase = (Coordinator(DecisionLog(store), node_id, faults=Faults.from_env(),
                                  decision_deadline=pc.twophase_timeout / 2)
                      if pc.two_phase_commit else None)


def start_twophase(config, store: MetadataStore, proxy, membership, metrics, node_id: str,
                   manager: bool) -> TwoPhaseRecovery | None:
    """Wire two-phase commit into a starting process: the Coordinator (see set_coordinator,
    set now if it is not yet) counts into metrics, and on a manager recovery runs while it is
    the elected leader. Returns the recovery service to stop, if any."""
    pc = config.proxy
    if pc.two_phase_commit and getattr(proxy, "twophase", None) is None:
        set_coordinator(config, store, proxy, node_id)
    if proxy.twophase is not None:
        proxy.twophase.metrics = metrics
    if not manager:
        return None
    recovery = TwoPhaseRecovery(store, lambda: proxy.catalog,
                                leader=lambda: membership.is_leader,
                                interval=pc.twophase_recovery_interval,
                                timeout=pc.twophase_timeout, metrics=metrics)
    recovery.start()
    return recovery
