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


# -- sticky.reason tokenizes past the first words only when maybe_dml says so: the same
#    answers as tokenizing every statement whole (the reference below, as it was).

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pgshard.sql import lex as lx  # noqa: E402
from pgshard.sql import settings as ss  # noqa: E402
from pgshard.sql import sticky  # noqa: E402


def _reference(sql: str, s: int, e: int, several: bool, esc: bool) -> str | None:
    toks = list(lx.tokens(sql, s, e, esc))
    i = 0
    while i < len(toks) and toks[i].kind == lx.OP and toks[i].text == "(":
        i += 1
    first = ss.word(toks[i]) if i < len(toks) else None
    if first in sticky._FIRST_WORDS:
        if first == "PREPARE" and ss.word(toks[i + 1] if i + 1 < len(toks) else None) \
                == "TRANSACTION":
            return None
        return sticky._FIRST_WORDS[first]
    if first in sticky._SET_WORDS:
        return f"{first} in a string of several statements" if several else None
    if first == "DECLARE" and any(ss.word(t) == "HOLD" for t in toks):
        return "a WITH HOLD cursor"
    prev = None
    for j, t in enumerate(toks):
        if t.kind == lx.IDENT:
            w = t.text.lower()
            if w in ("temp", "temporary") and prev in ("create", "global", "local", "into",
                                                       "or", "replace"):
                return "a temporary table"
            if w == "pg_temp" or w.startswith("pg_temp_"):
                return "a temporary table"
            if w in sticky._SESSION_FUNCTIONS and j + 1 < len(toks) and toks[j + 1].text == "(":
                return f"{w}()"
            prev = w
        elif t.kind == lx.QIDENT:
            if t.text[1:-1] in sticky._SESSION_FUNCTIONS and j + 1 < len(toks) \
                    and toks[j + 1].text == "(":
                return f"{t.text[1:-1]}()"
            prev = None
        elif not (t.kind == lx.OP and t.text == "."):
            prev = None
    return None


FRAGMENTS = ["SELECT", "select", "(", ")", " ", "PREPARE", "TRANSACTION", "DECLARE", "c",
             "CURSOR", "WITH", "HOLD", "FOR", "CREATE", "TEMP", "temporary", "TABLE", "t",
             "pg_temp", "pg_temp_3", ".", "x", "set_config", '"set_config"', "SET_CONFIG",
             "pg_advisory_lock", "dblink_connect_u", "'a'", "1", ",", ";", "/* c */",
             "-- c\n", "SET", "RESET", "LISTEN", "DO", "$$x$$", "E'\\''", "into", "or",
             "replace", "global", "local", "=", "INSERT", "\n"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=14), st.booleans(), st.booleans())
def test_reason_as_when_every_statement_was_tokenized_whole(parts, several, esc):
    sql = " ".join(parts)
    for s, e in lx.scan(sql, backslash_escapes=esc).statements:
        assert sticky._statement(sql, s, e, several, esc) == _reference(sql, s, e, several, esc)
