"""Prometheus metrics in a private registry: the proxy's hot-path hooks (cheap: plain
counters, no locks) plus collectors that read them, pools, clients and control-plane state at
scrape time."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from pgshard.proxy.cachestats import cache_usage

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)

POOL_STATS = ("acquired", "waited", "timeouts", "connects", "connect_errors")


class Metrics:
    """Set as `proxy.metrics`; `status` returns control-plane facts for the scrape."""

    def __init__(self, proxy, status: Callable[[], dict]):
        self.proxy = proxy
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self._errors = Counter("pgshard_errors", "Errors sent to clients, by SQLSTATE",
                               ["sqlstate"], registry=r)
        self._connections = Counter("pgshard_client_connections_accepted",
                                    "Client sessions that completed startup", registry=r)
        self._http = Counter("pgshard_http_requests", "REST requests by route and status",
                             ["method", "route", "status"], registry=r)
        self._twophase = Counter("pgshard_2pc", "Two-phase commits by outcome (committed, "
                                 "rolled_back, commit_incomplete, unknown, recovered_commit, "
                                 "recovered_rollback)", ["outcome"], registry=r)
        self._cancels = Counter("pgshard_cancel_requests", "CancelRequests received with "
                                "several workers: for a session of this worker (local) or "
                                "handed to the worker owning it (forwarded)", ["path"],
                                registry=r)
        self._in_doubt = 0
        # (shard, role, kind) -> QuerySeries: the statements counted on the hot path, read
        # by _QueryCollector at scrape time (prometheus_client's own Counter and Histogram
        # take a lock and make several Python calls per observation).
        self._series: dict[tuple[str, str, str], QuerySeries] = {}
        self._error_children: dict[str, object] = {}
        self._clients: set[int] = set()
        r.register(_QueryCollector(self._series))
        r.register(_StateCollector(self, status))

    # ---------------------------------------------------------------- proxy hooks

    def query(self, shard: str, role: str, kind: str, seconds: float) -> None:
        """One statement finished on `shard` (`role`: primary/replica:N)."""
        key = (shard, role, kind)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = QuerySeries()
        series.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series.total += seconds

    def client_connected(self, client) -> None:
        self._clients.add(id(client))
        self._connections.inc()

    def client_disconnected(self, client) -> None:
        self._clients.discard(id(client))

    def error(self, sqlstate: str) -> None:
        child = self._error_children.get(sqlstate)
        if child is None:
            child = self._error_children[sqlstate] = self._errors.labels(sqlstate)
        child.inc()

    def cancel_request(self, path: str) -> None:
        self._cancels.labels(path).inc()

    def twophase(self, outcome: str) -> None:
        """One two-phase transaction (or recovered participant) ended with `outcome`."""
        self._twophase.labels(outcome).inc()

    def twophase_in_doubt(self, count: int) -> None:
        """Prepared transactions the last recovery round left unresolved."""
        self._in_doubt = count

    # ---------------------------------------------------------------- sidecar

    def http_request(self, method: str, route: str, status: int) -> None:
        self._http.labels(method, route, str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class QuerySeries:
    """One (shard, role, kind)'s statements: how many fell in each latency bucket (the last
    is +Inf; the count is their sum) and their summed seconds."""

    __slots__ = ("buckets", "total", "created")

    def __init__(self):
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.created = time.time()


class _QueryCollector:
    """pgshard_queries (a counter) and pgshard_query_duration_seconds (a histogram) from the
    QuerySeries, in the form prometheus_client's Counter and Histogram expose."""

    _BOUNDS = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]

    def __init__(self, series: dict[tuple[str, str, str], QuerySeries]):
        self.series = series

    def collect(self):
        labels = ["shard", "role", "kind"]
        queries = CounterMetricFamily("pgshard_queries", "Statements routed, by shard, server "
                                      "role and statement kind", labels=labels)
        latency = HistogramMetricFamily("pgshard_query_duration_seconds", "Statement latency "
                                        "through the proxy", labels=labels)
        for key, s in list(self.series.items()):
            lv = list(key)
            cumulative, running = [], 0
            for bound, n in zip(self._BOUNDS, s.buckets, strict=True):
                running += n
                cumulative.append((bound, running))
            queries.add_metric(lv, running, created=s.created)
            latency.add_metric(lv, cumulative, s.total)
            latency.samples.append(Sample("pgshard_query_duration_seconds_created",
                                          dict(zip(labels, lv, strict=True)), s.created))
        yield queries
        yield latency


class _StateCollector:
    def __init__(self, metrics: Metrics, status: Callable[[], dict]):
        self.metrics = metrics
        self.status = status

    def collect(self):
        proxy = self.metrics.proxy
        labels = ["shard", "role", "user", "database"]
        size = GaugeMetricFamily("pgshard_pool_servers", "Server connections in the pool "
                                 "(open or opening)", labels=labels)
        idle = GaugeMetricFamily("pgshard_pool_idle", "Idle server connections", labels=labels)
        active = GaugeMetricFamily("pgshard_pool_active", "Server connections serving a client",
                                   labels=labels)
        waiters = GaugeMetricFamily("pgshard_pool_waiters", "Clients waiting for a server "
                                    "connection", labels=labels)
        limit = GaugeMetricFamily("pgshard_pool_max_servers", "Pool size limit", labels=labels)
        stats = {name: CounterMetricFamily(f"pgshard_pool_{name}", f"Pool {name} events",
                                           labels=labels) for name in POOL_STATS}
        for key, pool in list(proxy.pools.items()):
            lv = [key.shard, key.role, key.client or key.user, key.database]
            size.add_metric(lv, pool.size)
            idle.add_metric(lv, len(pool.idle))
            active.add_metric(lv, pool.active)
            waiters.add_metric(lv, len(pool.waiters))
            limit.add_metric(lv, pool.settings.pool_size)
            for name, fam in stats.items():
                fam.add_metric(lv, pool.stats.get(name, 0))
        yield from (size, idle, active, waiters, limit, *stats.values())
        yield GaugeMetricFamily("pgshard_client_connections", "Client sessions now connected",
                                value=len(self.metrics._clients))
        cache_bytes = GaugeMetricFamily("pgshard_cache_bytes", "Bytes held by a cache",
                                        labels=["cache"])
        cache_max = GaugeMetricFamily("pgshard_cache_max_bytes", "Byte budget of a cache",
                                      labels=["cache"])
        cache_entries = GaugeMetricFamily("pgshard_cache_entries", "Entries in a cache",
                                          labels=["cache"])
        for name, (entries, used, budget) in cache_usage(proxy).items():
            cache_bytes.add_metric([name], used)
            cache_max.add_metric([name], budget)
            cache_entries.add_metric([name], entries)
        yield from (cache_bytes, cache_max, cache_entries)
        yield GaugeMetricFamily("pgshard_2pc_in_doubt", "Prepared two-phase transactions the "
                                "last recovery round left unresolved (manager only)",
                                value=self.metrics._in_doubt)
        st = self.status()
        yield GaugeMetricFamily("pgshard_catalog_version", "Catalog version this router serves",
                                value=st.get("catalog_version") or 0)
        yield GaugeMetricFamily("pgshard_store_reachable", "1 if the metadata store answers",
                                value=1 if st.get("store_reachable") else 0)
        yield GaugeMetricFamily("pgshard_manager_leader", "1 if this process is the active "
                                "manager", value=1 if st.get("leader") else 0)
        yield GaugeMetricFamily("pgshard_catalog_shards", "Shards in the served catalog",
                                value=st.get("shards", 0))
