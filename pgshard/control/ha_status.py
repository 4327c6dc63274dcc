"""Each shard's availability as /health and /metrics report it: whether its primary answers,
a failover in progress or refused, statements held, fenced servers, replica lag and the
last failover; plus the Prometheus collector of those facts."""

from __future__ import annotations

import math

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pgshard.config import dsn_address

OK, DEGRADED = "ok", "degraded"
FAILOVER_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 30, 60)


def shard_states(proxy, failover=None) -> dict[str, dict]:
    """Per shard: {"state": ok|degraded, "reason", "primary", ...}; JSON-ready."""
    catalog = proxy.catalog
    if catalog is None:
        return {}
    monitor = proxy.replicas
    out = {}
    for shard in catalog.shards:
        reasons = []
        primary_up = None
        if monitor is not None:
            facts = monitor.node_facts(shard.primary)
            probe = monitor.last_probe(shard.primary)
            if facts.failures:
                primary_up = False
                reasons.append(f"primary {dsn_address(shard.primary)} is unreachable "
                               f"({facts.failures} failed checks)")
            elif probe is not None:
                primary_up = facts.reachable and not probe.in_recovery
                if probe.in_recovery:
                    reasons.append(f"primary {dsn_address(shard.primary)} is in recovery")
        else:
            pools = [p for k, p in proxy.pools.items()
                     if k.shard == shard.name and k.role == "primary"]
            if pools and not all(p.healthy() for p in pools):
                primary_up = False
                reasons.append(f"connections to primary {dsn_address(shard.primary)} fail")
        if shard.hold:
            reasons.append(f"statements held: {shard.hold}")
        busy = failover.busy.get(shard.name) if failover is not None else None
        if busy:
            reasons.append(f"{busy} in progress")
        refused = failover.refused.get(shard.name) if failover is not None else None
        if refused:
            reasons.append(f"failover not possible: {refused}")
        state = {
            "state": DEGRADED if reasons else OK,
            "reason": "; ".join(reasons) or None,
            "primary": dsn_address(shard.primary),
            "primary_up": primary_up,
            "replicas": len(shard.replicas),
            "synchronous": [dsn_address(d) for d in shard.sync],
            "fenced": [dsn_address(d) for d in shard.fenced],
            "last_failover": _failover_view(shard.last_failover),
        }
        out[shard.name] = state
    return out


def server_views(proxy, shard) -> dict:
    """A shard's servers for GET /api/v1/shards/{name}: role, health, lag, whether
    synchronous; plus its last failover."""
    monitor = proxy.replicas
    status = monitor.status().get(shard.name) if monitor is not None else None
    primary = status["primary"] if status else {}
    servers = [{"dsn": dsn_address(shard.primary), "role": "primary",
                "healthy": primary.get("reachable") if status else None,
                "lag_bytes": 0 if primary.get("reachable") else None,
                "lag_seconds": 0.0 if primary.get("reachable") else None, "sync": None}]
    replicas = status["replicas"] if status else [{} for _ in shard.replicas]
    for dsn, r in zip(shard.replicas, replicas, strict=False):
        servers.append({"dsn": dsn_address(dsn), "role": "replica",
                        "healthy": r.get("healthy"), "reason": r.get("reason"),
                        "lag_bytes": r.get("lag_bytes"), "lag_seconds": r.get("lag_seconds"),
                        "sync": dsn in shard.sync if shard.sync_quorum else False})
    for dsn in shard.fenced:
        servers.append({"dsn": dsn_address(dsn), "role": "fenced", "healthy": None,
                        "lag_bytes": None, "lag_seconds": None, "sync": False})
    return {"servers": servers, "sync_quorum": shard.sync_quorum,
            "last_failover": _failover_view(shard.last_failover)}


def _failover_view(record) -> dict | None:
    if record is None:
        return None
    data = record.to_json()
    data["from"], data["to"] = dsn_address(data["from"]), dsn_address(data["to"])
    return data


def degraded_summary(states: dict[str, dict]) -> list[str]:
    """"shardN: why" for every degraded shard."""
    return [f"{name}: {s['reason']}" for name, s in states.items() if s["state"] == DEGRADED]


class HaMetrics:
    """pgshard_failovers_total, pgshard_failover_seconds, replica lag gauges and shard state,
    in the sidecar's registry."""

    def __init__(self, registry, proxy):
        self.proxy = proxy
        self.failover = None    # the FailoverManager, on manager-capable processes
        self._failovers: dict[tuple[str, str], int] = {}
        self._refusals: dict[str, int] = {}
        self._seconds = Histogram("pgshard_failover_seconds", "Time from a failover's "
                                  "decision (or a switchover's request) to the new catalog",
                                  ["kind"], registry=registry, buckets=FAILOVER_BUCKETS)
        registry.register(self)

    def failed_over(self, shard: str, kind: str, seconds: float) -> None:
        key = (shard, kind)
        self._failovers[key] = self._failovers.get(key, 0) + 1
        self._seconds.labels(kind).observe(seconds)

    def refused(self, shard: str) -> None:
        self._refusals[shard] = self._refusals.get(shard, 0) + 1

    def collect(self):
        total = CounterMetricFamily("pgshard_failovers", "Primary changes this manager made, "
                                    "by shard and kind (failover, switchover)",
                                    labels=["shard", "kind"])
        for (shard, kind), n in self._failovers.items():
            total.add_metric([shard, kind], n)
        yield total
        refused = CounterMetricFamily("pgshard_failover_refused", "Rounds in which a shard "
                                      "needed a failover that the rule refused (no safe "
                                      "replica)", labels=["shard"])
        for shard, n in self._refusals.items():
            refused.add_metric([shard], n)
        yield refused
        lag_b = GaugeMetricFamily("pgshard_replica_lag_bytes", "WAL bytes a replica has not "
                                  "replayed yet", labels=["shard", "replica"])
        lag_s = GaugeMetricFamily("pgshard_replica_lag_seconds", "Replay lag of a replica "
                                  "(seconds; +Inf when unknown)", labels=["shard", "replica"])
        monitor = self.proxy.replicas
        if monitor is not None:
            for shard, view in monitor.status().items():
                for r in view["replicas"]:
                    if r["lag_bytes"] is not None:
                        lag_b.add_metric([shard, r["dsn"]], r["lag_bytes"])
                    lag_s.add_metric([shard, r["dsn"]], math.inf if r["lag_seconds"] is None
                                     else r["lag_seconds"])
        yield lag_b
        yield lag_s
        up = GaugeMetricFamily("pgshard_shard_degraded", "1 while a shard is degraded (primary "
                               "down, failover refused or in progress, statements held)",
                               labels=["shard"])
        for shard, st in shard_states(self.proxy, self.failover).items():
            up.add_metric([shard], 1 if st["state"] == DEGRADED else 0)
        yield up
        hold = getattr(self.proxy, "failover_hold", None)
        if hold is not None:
            yield GaugeMetricFamily("pgshard_failover_held_statements", "Statements this "
                                    "router holds while a shard fails over",
                                    value=hold.waiting)
