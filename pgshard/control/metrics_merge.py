"""One /metrics for `serve --workers N`: the workers' Prometheus texts merged into one
(counters, histograms and per-router gauges summed, state gauges taken min or max), plus
per-worker families that show each worker's share."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

# Gauges that count something each worker holds on its own: the whole is their sum.
SUMMED_GAUGES = ("pgshard_pool_", "pgshard_client_connections", "pgshard_cache_",
                 "pgshard_failover_held_statements")
# State every worker reports alike: the oldest / weakest one is the truth of the whole.
MIN_GAUGES = frozenset({"pgshard_catalog_version", "pgshard_store_reachable"})


def _combine(family: str, kind: str, sample: str):
    """How samples of one series from several workers are combined."""
    if sample.endswith("_created"):
        return min
    if kind in ("counter", "histogram", "summary"):
        return sum
    if family in MIN_GAUGES:
        return min
    if family.startswith(SUMMED_GAUGES):
        return sum
    return max


def merge(texts: dict[int, bytes | None]) -> bytes:
    """The merged exposition text of worker -> its text (None: it did not answer)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, list[float]]] = {}
    accepted = CounterMetricFamily("pgshard_worker_client_connections_accepted",
                                   "Client sessions that completed startup, per worker",
                                   labels=["worker"])
    connected = GaugeMetricFamily("pgshard_worker_client_connections",
                                  "Client sessions now connected, per worker", labels=["worker"])
    up = GaugeMetricFamily("pgshard_worker_up", "1 if the worker answered this scrape",
                           labels=["worker"])
    for worker, text in sorted(texts.items()):
        up.add_metric([str(worker)], 0 if text is None else 1)
        if text is None:
            continue
        for fam in text_string_to_metric_families(text.decode()):
            if fam.name not in families:
                families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
                values[fam.name] = {}
            series = values[fam.name]
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                series.setdefault(key, []).append(s.value)
                if s.name == "pgshard_client_connections_accepted_total":
                    accepted.add_metric([str(worker)], s.value)
                elif s.name == "pgshard_client_connections":
                    connected.add_metric([str(worker)], s.value)
    out = []
    for name, fam in families.items():
        for (sample, labels), vals in values[name].items():
            fam.add_sample(sample, dict(labels), _combine(name, fam.type, sample)(vals))
        out.append(fam)
    out += [accepted, connected, up]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(out))
    return generate_latest(registry)


class _Fixed:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families
