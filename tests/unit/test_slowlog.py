"""The slow-query log's decision (pgshard.proxy.slowlog.slow_record): threshold semantics and
the fields of the line, which carry no statement parameters."""

from __future__ import annotations

import pytest

from pgshard.proxy.slowlog import slow_record

ARGS = {"shard": "shard1", "role": "primary", "user": "app", "kind": "write",
        "client": "127.0.0.1:5000", "pid": 7}


@pytest.mark.parametrize("threshold, elapsed, logged", [
    (-1, 10.0, False), (0, 0.0, True), (100, 0.099, False), (100, 0.1, True), (100, 2.5, True),
])
def test_threshold(threshold, elapsed, logged):
    assert (slow_record(threshold, elapsed, **ARGS) is not None) is logged


def test_fields():
    rec = slow_record(50, 0.1234, **ARGS)
    assert rec == {"event": "slow_query", "shard": "shard1", "role": "primary", "user": "app",
                   "kind": "write", "duration_ms": 123.4, "client": "127.0.0.1:5000",
                   "client_pid": 7}
