"""lex.scan's path for texts without quotes, dollars or dashes: the same spans as the full scan."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgshard.sql import lex

FRAGMENTS = ["SELECT", "abalance", "FROM", "t", "WHERE", "aid", "=", "42", " ", "\n", "\t",
             ";", "/*", "*/", "/", "*", "shard_key:", "e", "E", "x", "(", ")", ",", "*/ /*"]

CASES = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 12345 /* shard_key: 12345 */;",
    "", " ", ";", ";;", "SELECT 1; SELECT 2", "/* a */", "/* a /* nested */ still */ SELECT 1",
    "/* unterminated", "SELECT 1 /* unterminated ;", "SELECT 2 / 3; */", "  ; SELECT 1 ;  ",
    "/**/SELECT/**/1/**/", "SELECT 1 /* ; */ ; SELECT 2",
]


@pytest.mark.parametrize("sql", CASES)
def test_plain_texts_scan_as_the_full_scan_does(sql):
    assert lex._scan_plain(sql) == lex._scan(sql, False) == lex._scan(sql, True)
    assert lex.scan(sql) == lex._scan(sql, False)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=20), st.sampled_from(["", " "]))
def test_random_plain_texts(parts, sep):
    sql = sep.join(parts)
    assert lex._scan_plain(sql) == lex._scan(sql, False)
    assert lex._scan_plain(sql) == lex._scan(sql, True)


@pytest.mark.parametrize("sql", ["SELECT ';'", 'SELECT 1 AS ";"', "SELECT $$;$$",
                                 "SELECT 1 -- ;\nFROM t"])
def test_texts_with_quotes_dollars_or_dashes_take_the_full_scan(sql):
    # the plain path would cut these at the ';' inside a string or comment
    assert lex._scan_plain(sql).statements != ((0, len(sql)),)
    assert lex.scan(sql) == lex._scan(sql, False)
    assert lex.scan(sql).statements == ((0, len(sql)),)
