"""Replica health for replica reads: polls every primary and replica in the catalog, measures
replay lag, bans failing replicas, and picks a healthy replica of a shard for a read."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from pgshard.background import Background
from pgshard.config import dsn_address
from pgshard.control.failover_rule import NodeFacts
from pgshard.ring.catalog import Catalog

log = logging.getLogger("pgshard.replicas")

POLICIES = ("round_robin", "least_connections")
APPLICATION_NAME = "pgshard-replica-monitor"
# Primary LSN samples kept to bound a replica's lag (see measure_lag); enough for minutes.
HISTORY_LEN = 4096
HISTORY_SECONDS = 300.0

# One query for every node, whatever its role: functions that fail on the wrong role
# (pg_current_wal_lsn during recovery, pg_is_wal_replay_paused outside it) sit in CASEs.
PROBE_SQL = """\
SELECT pg_is_in_recovery() AS in_recovery,
       CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()::text END AS current_lsn,
       pg_last_wal_replay_lsn()::text AS replay_lsn,
       pg_last_wal_receive_lsn()::text AS receive_lsn,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS paused,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS replay_age,
       current_setting('cluster_name') AS cluster_name,
       (SELECT status FROM pg_stat_wal_receiver) AS receiver_status,
       current_setting('synchronous_standby_names') AS sync_names
"""

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str) -> int:
    """A pg_lsn in its text form ("16/B374D848") as an integer byte position."""
    m = _LSN.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    """An integer byte position in pg_lsn text form."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _lsn_or_none(text: str | None) -> int | None:
    return None if text is None else parse_lsn(text)


@dataclass(frozen=True)
class Probe:
    """One successful check of a node. Times are time.monotonic()."""

    sent: float  # just before the query went out
    done: float  # when its answer arrived
    in_recovery: bool
    current_lsn: int | None  # pg_current_wal_lsn(), primaries only
    replay_lsn: int | None
    receive_lsn: int | None
    paused: bool
    replay_age: float | None  # now() - pg_last_xact_replay_timestamp(), seconds
    # For failover (pgshard.control.failover): the name a replica streams under, its WAL
    # receiver's state ('streaming', …; None: none runs), a primary's sync standby names.
    cluster_name: str | None = None
    receiver: str | None = None
    sync_names: str | None = None


def measure_lag(probe: Probe, primary_lsn: int | None,
                history: Sequence[tuple[float, int]] = ()) -> tuple[float, int | None]:
    """(lag in seconds, lag in bytes) of a replica's probe; seconds are inf when unknowable.

    Strategy: a replica that replayed everything the primary had is not lagging, however old
    its last replayed commit (an idle primary makes that timestamp look old). Otherwise its
    data is at most `now - last replayed commit` old, and also at most `now - t` old for the
    latest time t at which we saw the primary's LSN at or below the replica's replay LSN
    (history: (monotonic time, primary LSN) samples, oldest first). Both are measured upper
    bounds on staleness; the smaller one is the lag. The second one keeps a replica in use
    when a write lands on a long-idle primary just before a check.
    """
    replay = probe.replay_lsn
    if replay is None:
        return math.inf, None
    if primary_lsn is not None and replay >= primary_lsn:
        return 0.0, 0
    bounds = []
    if probe.replay_age is not None:
        bounds.append(max(0.0, probe.replay_age))
    for t, lsn in reversed(history):
        if lsn <= replay:
            bounds.append(max(0.0, probe.done - t))
            break
    lag_bytes = None if primary_lsn is None else primary_lsn - replay
    return (min(bounds) if bounds else math.inf), lag_bytes


class _Node:
    """What the monitor knows about one server (keyed by DSN, whatever its role)."""

    __slots__ = ("dsn", "address", "conn", "probe", "ok", "failures", "last_error",
                 "banned_until", "ban_reason", "lag_seconds", "lag_bytes")

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.address = dsn_address(dsn)
        self.conn: asyncpg.Connection | None = None
        self.probe: Probe | None = None  # the last successful check
        self.ok = False  # whether the last check succeeded
        self.failures = 0  # consecutive failed checks
        self.last_error: str | None = None
        self.banned_until = 0.0  # monotonic
        self.ban_reason: str | None = None
        self.lag_seconds = math.inf
        self.lag_bytes: int | None = None


class _History:
    """A shard primary's LSN over time, for lag bounds; reset when the primary changes."""

    def __init__(self, primary: str):
        self.primary = primary
        self.samples: deque[tuple[float, int]] = deque(maxlen=HISTORY_LEN)

    @property
    def last_lsn(self) -> int | None:
        return self.samples[-1][1] if self.samples else None

    def add(self, t: float, lsn: int) -> None:
        if self.samples and lsn < self.samples[-1][1]:
            self.samples.clear()  # a different server or timeline: old samples mean nothing
        self.samples.append((t, lsn))
        while self.samples and self.samples[0][0] < t - HISTORY_SECONDS:
            self.samples.popleft()


class ReplicaMonitor:
    """Polls the catalog's primaries and replicas; chooses replicas for eventual reads."""

    def __init__(self, get_catalog: Callable[[], Catalog], *, interval: float = 1.0,
                 max_lag: float = 10.0, failure_threshold: int = 2, ban_time: float = 30.0,
                 connect_timeout: float = 2.0):
        if interval <= 0 or max_lag < 0 or failure_threshold < 1 or ban_time < 0 \
                or connect_timeout <= 0:
            raise ValueError("replica monitor: bad interval/max_lag/failure_threshold/"
                             "ban_time/connect_timeout")
        self._get_catalog = get_catalog
        self.interval = interval
        self.max_lag = max_lag
        self.failure_threshold = failure_threshold
        self.ban_time = ban_time
        self.connect_timeout = connect_timeout
        # A check older than this (the loop is stuck or stopped) does not vouch for a replica.
        self.stale_after = 2 * (interval + 2 * connect_timeout)
        self._nodes: dict[str, _Node] = {}
        self._history: dict[str, _History] = {}
        self._last_pick: dict[str, int] = {}
        self._round_lock = asyncio.Lock()
        self._runner = Background(self._run, "pgshard-replica-monitor")

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start polling in the background (the first round runs at once)."""
        self._runner.start()

    async def stop(self) -> None:
        """Stop polling and close every connection."""
        await self._runner.stop()
        await asyncio.gather(*(self._disconnect(n) for n in self._nodes.values()))

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replica health round failed")
            await asyncio.sleep(self.interval)

    # -- polling -----------------------------------------------------------------------

    async def check_once(self) -> None:
        """One round: check every primary and replica of the catalog in parallel."""
        async with self._round_lock:
            try:
                shards = [(s.name, s.primary, tuple(s.replicas))
                          for s in self._get_catalog().shards]
            except Exception as exc:
                log.warning("replica health: no catalog to check: %s", exc)
                return
            replica_dsns = {dsn for _, _, replicas in shards for dsn in replicas}
            wanted = {primary for _, primary, _ in shards} | replica_dsns
            for dsn in wanted:
                if dsn not in self._nodes:
                    self._nodes[dsn] = _Node(dsn)
            await asyncio.gather(*(self._check(self._nodes[dsn], dsn in replica_dsns)
                                   for dsn in wanted), return_exceptions=True)
            for name, primary, replicas in shards:
                self._evaluate(name, primary, replicas)
            gone = [self._nodes.pop(dsn) for dsn in set(self._nodes) - wanted]
            await asyncio.gather(*(self._disconnect(node) for node in gone))
            for name in set(self._history) - {name for name, _, _ in shards}:
                del self._history[name]

    async def _check(self, node: _Node, is_replica: bool) -> None:
        try:
            if node.conn is None or node.conn.is_closed():
                node.conn = await asyncio.wait_for(asyncpg.connect(
                    node.dsn, timeout=self.connect_timeout, statement_cache_size=0,
                    server_settings={"application_name": APPLICATION_NAME}),
                    self.connect_timeout + 1)
            sent = time.monotonic()
            row = await node.conn.fetchrow(PROBE_SQL, timeout=self.connect_timeout)
            probe = Probe(sent=sent, done=time.monotonic(), in_recovery=bool(row["in_recovery"]),
                          current_lsn=_lsn_or_none(row["current_lsn"]),
                          replay_lsn=_lsn_or_none(row["replay_lsn"]),
                          receive_lsn=_lsn_or_none(row["receive_lsn"]),
                          paused=bool(row["paused"]), replay_age=row["replay_age"],
                          cluster_name=row["cluster_name"] or None,
                          receiver=row["receiver_status"], sync_names=row["sync_names"])
        except asyncio.CancelledError:
            self._drop(node)
            raise
        except Exception as exc:
            # A connection that failed or timed out is not trusted again: a fresh one next round.
            self._drop(node)
            self._failed(node, is_replica, f"{type(exc).__name__}: {exc}".rstrip(": "))
            return
        if not node.ok and node.failures:
            log.info("%s %s is reachable again after %d failed checks",
                     "replica" if is_replica else "primary", node.address, node.failures)
        if is_replica and not probe.in_recovery and (node.probe is None or node.probe.in_recovery):
            log.warning("replica %s is not in recovery (promoted?); not reading from it",
                        node.address)
        node.ok, node.failures, node.last_error, node.probe = True, 0, None, probe

    def _failed(self, node: _Node, is_replica: bool, error: str) -> None:
        node.ok = False
        node.failures += 1
        if error != node.last_error:
            log.warning("check of %s %s failed (%d in a row): %s",
                        "replica" if is_replica else "primary", node.address, node.failures,
                        error)
        node.last_error = error
        if is_replica and node.failures >= self.failure_threshold:
            now = time.monotonic()
            if node.banned_until <= now:
                log.warning("banning replica %s for %gs after %d failed checks", node.address,
                            self.ban_time, node.failures)
            # Extended while it keeps failing: the ban runs ban_time past the last failure.
            node.banned_until = max(node.banned_until, now + self.ban_time)
            node.ban_reason = f"{node.failures} failed checks: {error}"

    def _evaluate(self, shard: str, primary: str, replicas: tuple[str, ...]) -> None:
        history = self._history.get(shard)
        if history is None or history.primary != primary:
            history = self._history[shard] = _History(primary)
        p = self._nodes[primary]
        if p.ok and p.probe is not None and not p.probe.in_recovery \
                and p.probe.current_lsn is not None:
            history.add(p.probe.sent, p.probe.current_lsn)
        # An unreachable primary this round: its last known LSN is still the best target.
        primary_lsn = history.last_lsn
        for dsn in replicas:
            node = self._nodes[dsn]
            if node.ok and node.probe is not None and node.probe.in_recovery:
                node.lag_seconds, node.lag_bytes = measure_lag(node.probe, primary_lsn,
                                                               history.samples)
            else:
                node.lag_seconds, node.lag_bytes = math.inf, None

    @staticmethod
    def _drop(node: _Node) -> None:
        conn, node.conn = node.conn, None
        if conn is not None:
            conn.terminate()

    async def _disconnect(self, node: _Node) -> None:
        conn, node.conn = node.conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), 1.0)
        except asyncio.CancelledError:
            conn.terminate()
            raise
        except Exception:
            conn.terminate()

    # -- decisions ---------------------------------------------------------------------

    def _unusable(self, node: _Node | None, now: float, min_lsn: int | None = None) -> str | None:
        """Why a replica must not serve a read now, or None if it may."""
        if node is None or node.probe is None:
            return "not checked yet"
        if node.banned_until > now:
            return "banned"
        if not node.ok:
            return "last check failed"
        if now - node.probe.done > self.stale_after:
            return "last check too old"
        if not node.probe.in_recovery:
            return "not in recovery"
        if self._lag_now(node, now) > self.max_lag:
            return "replay paused" if node.probe.paused else "lagging"
        if min_lsn is not None and (node.probe.replay_lsn or 0) < min_lsn:
            return "behind the requested LSN"
        return None

    @staticmethod
    def _lag_now(node: _Node, now: float) -> float:
        # A paused replica that is behind only falls further behind after its check.
        if node.probe is not None and node.probe.paused and node.lag_bytes:
            return node.lag_seconds + max(0.0, now - node.probe.done)
        return node.lag_seconds

    def choose(self, shard: str, *, policy: str = "round_robin",
               load: Callable[[int], int] | None = None, min_lsn: int | None = None) -> int | None:
        """Index into the shard's replicas of one that may serve a read, or None: use the
        primary. Healthy means not banned, last check fresh and passed, in recovery, lag at
        most max_lag, and replayed up to min_lsn if given. least_connections picks the
        smallest load(index), ties (and round_robin) rotating over the candidates."""
        if policy not in POLICIES:
            raise ValueError(f"unknown replica policy {policy!r}; use one of {POLICIES}")
        try:
            replicas = self._get_catalog().shard(shard).replicas
        except Exception:
            return None
        now = time.monotonic()
        candidates = [i for i, dsn in enumerate(replicas)
                      if self._unusable(self._nodes.get(dsn), now, min_lsn) is None]
        if not candidates:
            return None
        if policy == "least_connections" and load is not None and len(candidates) > 1:
            loads = {i: load(i) for i in candidates}
            least = min(loads.values())
            candidates = [i for i in candidates if loads[i] == least]
        last = self._last_pick.get(shard, -1)
        pick = next((i for i in candidates if i > last), candidates[0])
        self._last_pick[shard] = pick
        return pick

    def ban(self, shard: str, index: int, reason: str) -> None:
        """Keep reads off a replica for ban_time (the proxy could not use it)."""
        try:
            dsn = self._get_catalog().shard(shard).replicas[index]
        except Exception:
            log.warning("cannot ban replica %r of shard %r: no such replica", index, shard)
            return
        node = self._nodes.get(dsn)
        if node is None:
            node = self._nodes[dsn] = _Node(dsn)
        now = time.monotonic()
        if node.banned_until <= now:
            log.warning("banning replica %s of shard %s for %gs: %s", node.address, shard,
                        self.ban_time, reason)
        node.banned_until = max(node.banned_until, now + self.ban_time)
        node.ban_reason = reason

    def primary_lsn(self, shard: str) -> int | None:
        """The shard primary's WAL position at the last check that reached it."""
        history = self._history.get(shard)
        return None if history is None else history.last_lsn

    def primary_lsn_since(self, shard: str, t: float) -> int | None:
        """The primary's LSN from the first check sent at or after monotonic time t: it
        covers every commit acknowledged before t (read-your-writes)."""
        history = self._history.get(shard)
        if history is None:
            return None
        for sent, lsn in history.samples:
            if sent >= t:
                return lsn
        return None

    def node_facts(self, dsn: str) -> NodeFacts:
        """The failover decision's view of one server (pgshard.control.failover_rule)."""
        node = self._nodes.get(dsn)
        if node is None:
            return NodeFacts(dsn, reachable=False)
        probe = node.probe
        fresh = probe is not None and time.monotonic() - probe.done <= self.stale_after
        return NodeFacts(
            dsn, reachable=node.ok and fresh, failures=node.failures,
            in_recovery=probe.in_recovery if probe else None,
            replay_lsn=probe.replay_lsn if probe else None,
            receive_lsn=probe.receive_lsn if probe else None,
            streaming=(probe.receiver == "streaming") if fresh and node.ok else None,
            app_name=probe.cluster_name if probe else None)

    def last_probe(self, dsn: str) -> Probe | None:
        """The last successful check of a server, however old."""
        node = self._nodes.get(dsn)
        return node.probe if node is not None else None

    def status(self) -> dict:
        """Per shard: its primary and replicas as last checked (JSON-ready, no passwords)."""
        try:
            shards = self._get_catalog().shards
        except Exception:
            return {}
        now, wall = time.monotonic(), time.time()
        out = {}
        for shard in shards:
            p = self._nodes.get(shard.primary)
            pp = p.probe if p is not None else None
            primary = {"dsn": dsn_address(shard.primary),
                       "reachable": bool(p and p.ok),
                       "in_recovery": None if pp is None else pp.in_recovery,
                       "current_lsn": _fmt(self.primary_lsn(shard.name)),
                       "failures": p.failures if p else 0,
                       "last_error": p.last_error if p else None}
            replicas = []
            for i, dsn in enumerate(shard.replicas):
                n = self._nodes.get(dsn)
                reason = self._unusable(n, now)
                rp = n.probe if n is not None else None
                banned = n is not None and n.banned_until > now
                lag = self._lag_now(n, now) if n is not None else math.inf
                replicas.append({
                    "index": i, "dsn": dsn_address(dsn), "healthy": reason is None,
                    "reason": reason,
                    "banned_until": wall + n.banned_until - now if banned else None,
                    "ban_reason": n.ban_reason if banned else None,
                    "lag_seconds": None if math.isinf(lag) else round(lag, 3),
                    "lag_bytes": n.lag_bytes if n is not None else None,
                    "replay_lsn": _fmt(rp.replay_lsn if rp else None),
                    "replay_paused": rp.paused if rp else None,
                    "in_recovery": rp.in_recovery if rp else None,
                    "failures": n.failures if n else 0,
                    "last_error": n.last_error if n else None,
                })
            out[shard.name] = {"primary": primary, "replicas": replicas}
        return out


def _fmt(lsn: int | None) -> str | None:
    return None if lsn is None else format_lsn(lsn)

