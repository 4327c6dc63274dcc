"""The slow-query log's decision (pgshard.proxy.slowlog.slow_record): threshold semantics and
the fields of the line, which carry no statement parameters."""

from __future__ import annotations

import pytest

from pgshard.proxy.slowlog import fingerprint, slow_record

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


@pytest.mark.parametrize("sql, want", [
    ("SELECT * FROM t WHERE id = 42 AND name = 'o''brien'", "SELECT * FROM t WHERE id = ? AND name = ?"),
    ("INSERT INTO t2 VALUES ($1, $2)", "INSERT INTO t2 VALUES ($1, $2)"),
    ("SELECT $$secret$$, $x$also$x$, -3.5e2, t1.c2", "SELECT ?, ?, ?, t1.c2"),
    ("SELECT E'a\\'', x'ff',  \n 7", "SELECT ?, ?, ?"),
    (b"Q\x00\x00\x00\x18SELECT 'pw' FROM t\x00", "SELECT ? FROM t"),
    ("SELECT 1 WHERE a = 'never closed", "SELECT ? WHERE a =…"),
    ("SELECT " + "x" * 3000 + " WHERE p = 'secret'", "SELECT " + "x" * 993 + "…"),
])
def test_fingerprint_masks_literals(sql, want):
    assert fingerprint(sql) == want
