"""Resharding metrics in the sidecar's registry: jobs' progress read at scrape time
(pgshard_job_rows_copied, pgshard_job_rows_total, pgshard_job_lag_bytes, pgshard_job_phase)
and how long routers held statements on fenced ranges (pgshard_fence_hold_seconds)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily

from pgshard.reshard.job import PHASES

HOLD_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ReshardMetrics:
    """Set as `proxy.fence_metrics` (the fence's hold reports to it)."""

    def __init__(self, registry, service: Callable[[], object | None]):
        self._hold = Histogram("pgshard_fence_hold_seconds", "How long statements on a range "
                               "being resharded were held by its fence", registry=registry,
                               buckets=HOLD_BUCKETS)
        registry.register(_JobCollector(service))

    def fence_hold(self, seconds: float) -> None:
        self._hold.observe(seconds)


class _JobCollector:
    def __init__(self, service: Callable[[], object | None]):
        self.service = service

    def collect(self):
        labels = ["job", "kind"]
        copied = GaugeMetricFamily("pgshard_job_rows_copied", "Rows a resharding job copied",
                                   labels=labels)
        total = GaugeMetricFamily("pgshard_job_rows_total", "Rows a resharding job expects to "
                                  "copy (an estimate from the planner's statistics)",
                                  labels=labels)
        lag = GaugeMetricFamily("pgshard_job_lag_bytes", "WAL of the job's sources not yet "
                                "applied to the destination", labels=labels)
        phase = GaugeMetricFamily("pgshard_job_phase", "1 for the phase a running job is in",
                                  labels=[*labels, "phase"])
        svc = self.service()
        for job in (getattr(svc, "running", {}) or {}).values():
            lv = [job.id, job.kind]
            copied.add_metric(lv, job.rows_copied)
            total.add_metric(lv, job.rows_total)
            lag.add_metric(lv, job.lag_bytes)
            for p in PHASES:
                phase.add_metric([*lv, p], 1 if job.phase == p else 0)
        yield from (copied, total, lag, phase)
