"""What pg_dump's statements are to the router, as tables: LOCK, COPY … TO STDOUT and
EXPLAIN on sharded tables, COPY rewritten for a shard that answers for its own ranges, and
pgshard's own objects recognised in DDL."""

from __future__ import annotations

import pytest

from pgshard.sql import analysis as sp
from pgshard.sql.copy_out import as_select, restricted, with_query
from pgshard.sql.own_objects import own_object

TABLES = {"accounts": "id", "docs": "code"}

KINDS = [
    ("LOCK TABLE public.accounts IN ACCESS SHARE MODE", sp.LOCK, ("accounts",), None, None),
    ("LOCK accounts, docs", sp.LOCK, ("accounts", "docs"), None, None),
    ("COPY public.accounts (id, owner) TO stdout;", sp.COPY_OUT, ("accounts",), None, None),
    ("COPY docs TO STDOUT WITH (FORMAT csv, HEADER)", sp.COPY_OUT, ("docs",), None, "header"),
    ("COPY docs TO STDOUT WITH (FORMAT csv, HEADER false)", sp.COPY_OUT, ("docs",), None, None),
    ("COPY docs TO STDOUT (FORMAT binary)", sp.COPY_OUT, ("docs",), "binary COPY", None),
    ("COPY docs TO '/tmp/f'", sp.OTHER, ("docs",), "COPY cannot run", None),
    ("EXPLAIN SELECT * FROM accounts", sp.EXPLAIN, ("accounts",), None, "text"),
    ("EXPLAIN (FORMAT JSON) SELECT * FROM accounts", sp.EXPLAIN, ("accounts",), None, "json"),
    ("EXPLAIN DELETE FROM accounts", sp.EXPLAIN, ("accounts",), None, "text"),
    ("EXPLAIN ANALYZE DELETE FROM accounts", sp.EXPLAIN, ("accounts",), "EXPLAIN ANALYZE",
     "text"),
    ("EXPLAIN ANALYZE SELECT count(*) FROM accounts", sp.EXPLAIN, ("accounts",), None, "text"),
]


@pytest.mark.parametrize("sql,kind,tables,refuse,option", KINDS)
def test_kinds(sql, kind, tables, refuse, option):
    a = sp.analyze(sql, TABLES)
    assert (a.kind, a.tables, a.option) == (kind, tables, option)
    assert (a.refuse or "").startswith(refuse or "") and bool(a.refuse) == bool(refuse)


def test_keyed_explain_keeps_its_keys():
    a = sp.analyze("EXPLAIN SELECT * FROM accounts WHERE id = 3", TABLES)
    assert a.kind == sp.EXPLAIN and [k.literal for k in a.keys] == ["3"]


COPIES = [
    ("COPY public.accounts (id, owner) TO stdout", "SELECT id, owner FROM public.accounts"),
    ("COPY docs TO STDOUT", "SELECT * FROM docs"),
    ('COPY "Docs" ("Code") TO STDOUT', 'SELECT "Code" FROM "Docs"'),
]


@pytest.mark.parametrize("sql,select", COPIES)
def test_copy_as_select(sql, select):
    assert as_select(sql) == select


def test_copy_with_query_keeps_options():
    out = with_query("COPY docs (code) TO STDOUT WITH (FORMAT csv, HEADER)",
                     "SELECT code FROM docs WHERE code > 'a'")
    assert out == ("COPY (SELECT code FROM docs WHERE code > 'a') TO STDOUT "
                   "WITH (FORMAT csv, HEADER)")
    assert restricted("COPY docs TO STDOUT", lambda q: q + " WHERE false") == \
        "COPY (SELECT * FROM docs WHERE FALSE) TO STDOUT"


OWN = [
    ("CREATE SCHEMA pgshard", "CREATE SCHEMA", False, False),
    ("ALTER SCHEMA pgshard OWNER TO postgres", "ALTER SCHEMA", False, False),
    ("CREATE FUNCTION pgshard.hash(bigint) RETURNS bigint LANGUAGE sql AS $$ SELECT 1 $$",
     "CREATE FUNCTION", False, False),
    ("ALTER FUNCTION pgshard.hash(bigint) OWNER TO postgres", "ALTER FUNCTION", False, False),
    ("CREATE TABLE pgshard.id_space (one bool)", "CREATE TABLE", False, False),
    ("ALTER TABLE ONLY pgshard.id_space ADD CONSTRAINT k PRIMARY KEY (one)", "ALTER TABLE",
     False, False),
    ("GRANT USAGE ON SCHEMA pgshard TO PUBLIC", "GRANT", False, False),
    ("REVOKE ALL ON SCHEMA pgshard FROM PUBLIC", "REVOKE", False, False),
    ("GRANT SELECT ON TABLE pgshard.id_space TO PUBLIC", "GRANT", False, False),
    ("COMMENT ON FUNCTION pgshard.hash(text) IS 'x'", "COMMENT", False, False),
    ("CREATE EVENT TRIGGER pgshard_align_sequences ON ddl_command_end EXECUTE FUNCTION "
     "pgshard.align_new_sequences()", "CREATE EVENT TRIGGER", False, False),
    ("ALTER EVENT TRIGGER pgshard_align_sequences OWNER TO x", "ALTER EVENT TRIGGER", False,
     False),
    ("COPY pgshard.id_space (one, slot) FROM stdin", "COPY", False, True),
    ("DROP SCHEMA pgshard CASCADE", "DROP SCHEMA", True, False),
    ("DROP FUNCTION pgshard.hash(text)", "DROP FUNCTION", True, False),
    ("DROP TABLE public.x, pgshard.id_space", "DROP TABLE", True, False),
]

NOT_OWN = [
    "CREATE TABLE t (x bigint DEFAULT pgshard.hash('a'))",
    "CREATE SCHEMA pgshard_extra",
    "GRANT SELECT ON public.a TO x",
    "GRANT USAGE ON SCHEMA pgshard, public TO x",   # not only pgshard's: it runs
    "COPY public.accounts FROM stdin",
    "COPY pgshard.id_space TO stdout",
    "CREATE EVENT TRIGGER mine ON ddl_command_end EXECUTE FUNCTION f()",
    "SELECT pgshard.hash('x')",
    "CREATE SCHEMA pgshard; CREATE TABLE x (a int)",
]


@pytest.mark.parametrize("sql,tag,drop,copy_in", OWN)
def test_own_objects(sql, tag, drop, copy_in):
    own = own_object(sql)
    assert own is not None and (own.tag, own.drop, own.copy_in) == (tag, drop, copy_in)


@pytest.mark.parametrize("sql", NOT_OWN)
def test_not_own_objects(sql):
    assert own_object(sql) is None
