"""sticky.maybe_dml, the classifier's cheap pre-test: the same answers as the regex it replaced."""

from __future__ import annotations

import re

import pytest

from pgshard.sql.sticky import maybe_dml

OLD = re.compile(r"set_config|advisory_lock|dblink_connect|temp", re.I)

CASES = [
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;", False),
    ("select SET_CONFIG('search_path', 'x', false)", True),
    ("CREATE TEMP TABLE t (a int)", True),
    ("create temporary table t (a int)", True),
    ("SELECT pg_advisory_lock(1)", True),
    ("SELECT pg_try_Advisory_Lock_shared(1)", True),
    ("SELECT dblink_connect('x')", True),
    ("UPDATE t SET tempo = 1", True),        # a substring test, as before: then tokenized
    ("", False),
    ("SELECT 'é' FROM t", False),
    ("INSERT INTO t VALUES (1), (2)", False),
]


@pytest.mark.parametrize("sql,expected", CASES)
def test_maybe_dml(sql, expected):
    assert maybe_dml(sql) is expected
    assert (OLD.search(sql) is not None) is expected
