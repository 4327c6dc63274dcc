"""The hot path's query series expose exactly what prometheus_client's Counter and Histogram
would for the same statements (the form the console, the worker merge and scrapers read)."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from pgshard.control.metrics import LATENCY_BUCKETS, Metrics


class _Proxy:
    pools: dict = {}


def _without_created(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines()
            if "_created" not in line]


@pytest.mark.parametrize("observations", [
    [],
    [("shard0", "primary", "read", 0.0002)],
    [("shard0", "primary", "read", 0.0005),          # on a bound: counted in that bucket
     ("shard0", "primary", "read", 0.0007),
     ("shard1", "replica:0", "write", 3.0),
     ("shard1", "replica:0", "write", 99.0),          # past the last bound: +Inf only
     ("shard0", "primary", "ddl", 0.01)],
])
def test_series_render_like_prometheus_client(observations):
    metrics = Metrics(_Proxy(), lambda: {})
    ref = CollectorRegistry()
    labels = ["shard", "role", "kind"]
    c = Counter("pgshard_queries", "Statements routed, by shard, server role and statement "
                "kind", labels, registry=ref)
    h = Histogram("pgshard_query_duration_seconds", "Statement latency through the proxy",
                  labels, registry=ref, buckets=LATENCY_BUCKETS)
    for shard, role, kind, seconds in observations:
        metrics.query(shard, role, kind, seconds)
        c.labels(shard, role, kind).inc()
        h.labels(shard, role, kind).observe(seconds)
    ours = [line for line in _without_created(metrics.render()[0])
            if re.match(r"(# (HELP|TYPE) )?pgshard_quer", line)]
    assert ours == _without_created(generate_latest(ref))


def test_series_carry_created_timestamps():
    metrics = Metrics(_Proxy(), lambda: {})
    metrics.query("shard0", "primary", "read", 0.001)
    text = metrics.render()[0].decode()
    assert re.search(r'^pgshard_queries_created\{kind="read",role="primary",shard="shard0"\} '
                     r'\d+\.\d+e\+09$', text, re.M)
    assert re.search(r"^pgshard_query_duration_seconds_created\{", text, re.M)
