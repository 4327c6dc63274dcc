"""The SQL lexer under the classifier: hints only from real comments, pgshard.* settings
found by token wherever they are, SET values validated like PostgreSQL's (no servers)."""

from __future__ import annotations

import random

import pytest
from pglast import parser as pg

from pgshard.config import ConfigError, config_from_dict
from pgshard.protocol.errors import FeatureNotSupported, InvalidParameterValue, PgError
from pgshard.sql import classify as r
from pgshard.sql import lex as lx


@pytest.fixture(autouse=True)
def _fresh_cache():
    r.clear_cache()
    yield
    r.clear_cache()


# ------------------------------------------------------------ comment spans

CORPUS = [
    "SELECT 1",
    "SELECT 'a /* b */ c' /* real */",
    "SELECT E'it\\'s /* x */' /* y */, 'z'",
    "SELECT $$ /* no */ $$ /* yes */",
    "SELECT $t$ $$ /* no */ $$ $t$, $u$x$u$ /* yes */",
    'SELECT "a /* no */ b" /* yes */ FROM t',
    "SELECT 1 /* outer /* inner */ still outer */ -- line /* no */\n/* yes */",
    "SELECT a$b$ /* yes, a$b$ is an identifier */ FROM t",
    "SELECT $1 /* yes */ , $2$$x$$",
    "SELECT U&'d\\0061t' /* yes */, U&\"a\" /* yes */",
    "SELECT 'a''b /* no */' /* yes */; SELECT 'c' /* yes */",
    "SELECT 1 -- /* no */\r/* yes */",
    "SELECT 2*/*c*/3",
    "SELECT 'a'\n'b' /* yes */",
    "SELECT 1 /* unterminated",
    "SELECT 'unterminated /* no */",
]


@pytest.mark.parametrize("sql", CORPUS)
def test_comment_spans_agree_with_postgresqls_scanner(sql):
    try:
        expected = [(t.start, t.end + 1) for t in pg.scan(sql) if t.name == "C_COMMENT"]
    except Exception:
        expected = []   # PostgreSQL rejects the text: no comment is a hint
    assert list(lx.scan(sql).comments) == expected


@pytest.mark.parametrize("sql", CORPUS + ["SELECT 1;;", ";", "/* c */ ; -- d", "SELECT ';'; SELECT 2"])
def test_statement_spans_agree_with_postgresqls_splitter(sql):
    try:
        expected = [sql[s:s + n].strip() for s, n in pg.split(sql, with_parser=False,
                                                               only_slices=True)]
    except Exception:
        return   # the text does not lex; what matters is the agreed cases
    # pglast drops comment-only statements and strips; compare the statements' code
    got = [sql[s:e].strip() for s, e in lx.scan(sql).statements]
    assert [g for g in got if g] == [e for e in expected if e and _has_code(e)]


def _has_code(s: str) -> bool:
    return any(t.name not in ("C_COMMENT", "SQL_COMMENT") for t in pg.scan(s))


@pytest.mark.parametrize("sql", [
    "SELECT x, 'a', E'b\\n', $$c$$, $q$d$q$, \"e\", U&'f', 1.5e3, .5, $1, a::int, a<>b, -1, "
    "x=-1, b||'c', t.col, f(a, b) FROM t WHERE q @> '{}' AND z !~~* 'w'",
])
def test_tokens_agree_with_postgresqls_scanner(sql):
    expected = [sql[t.start:t.end + 1] for t in pg.scan(sql)
                if t.name not in ("C_COMMENT", "SQL_COMMENT")]
    assert [t.text for t in lx.tokens(sql)] == expected


# ------------------------------------------------------------ hints

@pytest.mark.parametrize("sql", [
    "INSERT INTO accounts VALUES (7000001, '/* shard_key: 2 */', 0)",
    "INSERT INTO accounts VALUES (7000001, E'\\' /* shard_key: 2 */', 0)",
    "INSERT INTO accounts VALUES (7000001, $$ /* shard_key: 2 */ $$, 0)",
    "INSERT INTO accounts VALUES (7000001, $x$ /* shard: shard1 */ $x$, 0)",
    'SELECT 1 AS "/* shard_key: 2 */"',
    "SELECT 1 -- /* shard_key: 2 */",
    "SELECT 1 /* note /* shard_key: 2 */ */",
    "SELECT 1 /* shard_key: 2",
    "SELECT '/* consistency: eventual */'",
    "SELECT 1, 'unterminated /* shard_key: 2 */",
])
def test_no_hint_from_literals_identifiers_or_other_comments(sql):
    p = r.plan(sql)
    assert (p.shard_key, p.shard, p.key_param, p.consistency) == (None, None, None, None)


def test_a_hint_beside_a_literal_that_looks_like_one_is_read():
    p = r.plan("INSERT INTO accounts VALUES (1, '/* shard_key: 2 */', 0) /* shard_key: 9 */")
    assert p.shard_key == b"9"


def test_a_hint_that_depends_on_standard_conforming_strings_is_not_trusted():
    # With standard_conforming_strings on, '\' is a literal and the comment is real; with it
    # off, the comment is inside the literal. Only what both readings agree on counts.
    amb = r.plan("SELECT '\\' /* shard_key: 2 */ '")
    assert amb.shard_key is None
    both = r.plan("SELECT 'a\\b' /* shard_key: 2 */")
    assert both.shard_key == b"2"


def test_hint_values_and_names():
    assert r.plan("SELECT 1 /*  shard_key :  'a b'  */").shard_key == b"a b"
    assert r.plan("SELECT 1 /* shard_key: 1 */ /* shard_key: 2 */").shard_key == b"2"
    assert r.plan("SELECT 1 /* Shard_Key: 1 */").shard_key is None
    assert r.plan("SELECT 1 /* shard_key: a b */").shard_key is None
    assert r.plan("SELECT 1 /* shard_keys: 1 */").shard_key is None


# ------------------------------------------------------------ pgshard.* in several statements

@pytest.mark.parametrize("sql", [
    "SET pgshard.shard = 'shard1'; DROP TABLE accounts",
    "DROP TABLE accounts; SET pgshard.shard = 'shard1'",
    "SELECT 1; SET LOCAL pgshard.shard_key = '5'",
    "BEGIN; SET LOCAL pgshard.shard_key = '5'; INSERT INTO t VALUES (5); COMMIT",
    "SELECT 1; RESET pgshard.shard",
    "SELECT 1; SHOW pgshard.shard",
    "SELECT 1; set /* c */ \"PGSHARD\" . shard to 'x'",
    "SELECT 1; SET SESSION pgshard.consistency = eventual",
    "SELECT 1; SET pgshard.nonexistent = 1",
    # under standard_conforming_strings off this is SELECT …; SET pgshard…; SELECT …
    "SELECT 'a\\'; SET pgshard.shard = 1; SELECT '",
])
def test_pgshard_settings_in_a_multi_statement_string_are_refused(sql):
    with pytest.raises(FeatureNotSupported) as e:
        r.plan(sql)
    assert e.value.sqlstate == "0A000"
    assert "must be sent as their own statement" in e.value.message


@pytest.mark.parametrize("sql", [
    "SELECT 'SET pgshard.shard = x'; SELECT 1",
    "SELECT 1; SELECT $$; SET pgshard.shard = 'x'; $$",
    "SELECT 1 /* ; SET pgshard.shard = 'x' */; SELECT 2",
    "SELECT 1; SET search_path = pgshard, public",
    "SELECT 1; SHOW pgshard_x",
    'SELECT 1; SELECT "SET pgshard.shard"',
])
def test_pgshard_in_literals_comments_or_other_names_is_not_a_setting(sql):
    assert r.plan(sql).multi is True


# ------------------------------------------------------------ SET pgshard.* values

@pytest.mark.parametrize("sql, value", [
    ("SET pgshard.shard_key = '42'", "42"),
    ("SET pgshard.shard_key TO 42", "42"),
    ("SET pgshard.shard_key = 007", "7"),
    ("SET pgshard.shard_key = -5", "-5"),
    ("SET pgshard.shard_key = +5", "5"),
    ("SET pgshard.shard_key = 1.50", "1.50"),
    ("SET pgshard.shard_key = 99999999999", "99999999999"),
    ("SET pgshard.shard_key = Abc", "abc"),
    ('SET pgshard.shard_key = "Abc"', "Abc"),
    ("SET pgshard.shard_key = 'o''brien'", "o'brien"),
    ("SET pgshard.shard_key = E'tab\\there'", "tab\there"),
    ("SET pgshard.shard_key = $$x'y$$", "x'y"),
    ("SET pgshard.shard_key = U&'d\\0061t'", "dat"),
    ("SET pgshard.shard_key = 'a'\n  'b'", "ab"),
    ("SET pgshard.shard_key = on", "on"),
    ("SET pgshard.shard_key = 'x' /* c */ ;", "x"),
    ("SET pgshard.shard_key = DEFAULT", None),
    ("SET pgshard.shard_key TO default", None),
    ("SET pgshard.shard = shard1", "shard1"),
    ("SET pgshard.consistency = 'eventual'", "eventual"),
    ("set PGSHARD.Consistency = Eventual", "eventual"),
])
def test_set_pgshard_values(sql, value):
    p = r.plan(sql)
    assert p.kind == r.SET_PGSHARD and p.value == value


@pytest.mark.parametrize("sql, sqlstate", [
    ("SET pgshard.shard_key = 'x' || 'y'", "42601"),
    ("SET pgshard.shard_key = 42, 43", "22023"),
    ("SET pgshard.shard_key = 'a', 'b'", "22023"),
    ("SET pgshard.shard_key = ", "42601"),
    ("SET pgshard.shard_key", "42601"),
    ("SET pgshard.shard_key '42'", "42601"),
    ("SET pgshard.shard_key = 'unterminated", "42601"),
    ("SET pgshard.shard_key = select", "42601"),
    ("SET pgshard.shard_key = null", "42601"),
    ("SET pgshard.shard_key = DEFAULT 1", "42601"),
    ("SET pgshard.shard_key = 'a' 'b'", "42601"),      # no newline: not a continuation
    ("SET pgshard.shard_key = (1)", "42601"),
    ("SET pgshard.shard_key = ''", None),               # the empty string is a value
    ('SET pgshard.shard_key = ""', "42601"),
    ("SET pgshard.shard_key FROM CURRENT", "0A000"),
    ("RESET pgshard.shard_key junk", "42601"),
    ("SHOW pgshard.shard junk", "42601"),
])
def test_set_pgshard_rejects_what_postgresql_rejects(sql, sqlstate):
    if sqlstate is None:
        assert r.plan(sql).value == ""
        return
    with pytest.raises(PgError) as e:
        r.plan(sql)
    assert e.value.sqlstate == sqlstate, e.value.message


def test_postgresql_agrees_on_what_is_a_syntax_error():
    """The 42601 cases above are syntax errors to PostgreSQL's own parser too."""
    for sql in ("SET pgshard.shard_key = 'x' || 'y'", "SET pgshard.shard_key = select",
                "SET pgshard.shard_key '42'", "SET pgshard.shard_key = (1)",
                "SET pgshard.shard_key = DEFAULT 1", "SET pgshard.shard_key = 'a' 'b'"):
        with pytest.raises(pg.ParseError):
            pg.parse_sql(sql)
    for sql in ("SET pgshard.shard_key = 42, 43", "SET pgshard.shard_key = 'a'\n'b'",
                "SET pgshard.shard_key = U&'d\\0061t'", "SET pgshard.shard_key = Abc"):
        pg.parse_sql(sql)


# ------------------------------------------------------------ other SET / RESET / SHOW

@pytest.mark.parametrize("sql, kind, name, value", [
    ("SET search_path = a, \"B\"", r.SET, "search_path", 'a, "B"'),
    ("SET work_mem TO '4MB' -- trailing comment", r.SET, "work_mem", "'4MB'"),
    ("SET LOCAL statement_timeout = 0", r.SET_LOCAL, "statement_timeout", "0"),
    ("SET x.y = -1", r.SET, "x.y", "-1"),
    ("SET datestyle TO DEFAULT", r.SET, "datestyle", None),   # tracked as a RESET
    ("SET TIME ZONE 'UTC'", r.SET, "timezone", "'UTC'"),
    ("SET LOCAL TIME ZONE 'UTC'", r.SET_LOCAL, "timezone", "'UTC'"),
    ("SET ROLE app", r.SET, "role", "app"),
    ("SET SCHEMA 'app'", r.SET, "search_path", "'app'"),
    ("RESET work_mem", r.RESET, "work_mem", None),
    ("RESET TIME ZONE", r.RESET, "timezone", None),
    ("RESET ALL", r.RESET, "all", None),
    ("DEALLOCATE PREPARE \"S1\"", r.DEALLOCATE, "S1", None),
    ("DEALLOCATE s1", r.DEALLOCATE, "s1", None),
    ("DEALLOCATE ALL", r.DEALLOCATE, None, None),
])
def test_other_settings(sql, kind, name, value):
    p = r.plan(sql)
    assert (p.kind, p.name, p.value) == (kind, name, value)


@pytest.mark.parametrize("sql", [
    "SET work_mem = 'a' || 'b'", "SET x FROM CURRENT", "SET SESSION AUTHORIZATION app",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "SET \"weird name\" = 1",
    "RESET SESSION AUTHORIZATION", "SET x = null",
])
def test_settings_pgshard_cannot_replay_go_to_postgresql_untracked(sql):
    assert r.plan(sql).kind == r.STATEMENT


@pytest.mark.parametrize("sql, kind", [
    ("ROLLBACK\nTO SAVEPOINT a", r.TXN_INNER), ("ROLLBACK /* TO */", r.ROLLBACK),
    ("ROLLBACK AND CHAIN", r.ROLLBACK), ("ROLLBACK PREPARED 'g'", r.TXN_INNER),
    ("COMMIT /* PREPARED */", r.COMMIT), ("/* c */", r.EMPTY), ("-- c\n;", r.EMPTY),
    ("((SELECT 1))", r.STATEMENT), ("DISCARD ALL;", r.DISCARD_ALL),
    ("DISCARD PLANS", r.STATEMENT),
])
def test_kinds_read_from_tokens(sql, kind):
    assert r.plan(sql).kind == kind


@pytest.mark.parametrize("sql, word, sticky", [
    ("((SELECT 1))", "SELECT", None),
    ("( /* ( */ (\n\tSELECT pg_advisory_lock(1)))", "SELECT", "pg_advisory_lock()"),
    ("(( -- c\n (CREATE TEMP TABLE t (a int)", "CREATE", "a temporary table"),
    ("(" * 20000 + "SELECT 1", "SELECT", None),
    ("(((", None, None), ("( ;", None, None),
])
def test_opening_parentheses_are_skipped_before_the_first_word(sql, word, sticky):
    # A run of '(' and white space is passed in one step; a comment inside it is a token.
    p = r.plan(sql)
    assert (p.first_word or None, p.sticky) == (word, sticky)


# ------------------------------------------------------------ the cache

def test_plan_cache_is_bounded_by_bytes_and_skips_huge_texts():
    # Texts with a string literal: the slow path (the one-comment fast path keeps nothing).
    r.configure_cache(200_000)
    try:
        for i in range(400):
            r.plan(f"SELECT '{i}' /* shard_key: {i} */ " + "x" * 2000)
        entries, used = r.cache_usage()
        assert used <= 200_000 and 0 < entries < 400
        big = "SELECT '1' /* shard_key: 1 */ " + "y" * (r.MAX_CACHED_TEXT + 1)
        assert r.plan(big).shard_key == b"1"
        assert r.cache_usage()[1] <= 200_000
        assert big not in r._cache
        small = "SELECT '2' /* shard_key: 2 */"
        assert r.plan(small) is r.plan(small)     # kept and found again
    finally:
        r.configure_cache(r.DEFAULT_PLAN_CACHE_BYTES)


def test_errors_are_not_cached_and_stay_errors():
    for _ in range(2):
        with pytest.raises(InvalidParameterValue):
            r.plan("SET pgshard.shard_key = 1, 2")


_PIECES = ["SELECT", " ", "\n", "'", "''", '"', "$", "$$", "$a$", "/*", "*/", "--", ";", "\\",
           "E'", "U&'", "x", "e", "1", ".", "+", "-", "*", "/", "=", "<", ">", "(", ",", "é",
           "$1", "a$b", "::", "%", "!", "||", "\t", "b'", "N'", 'u&"', "1e5", ".5", "\r", "@",
           "~", "?", ":", "&", "#", "^", "`", "|", "$x$", "$_$", "$1$", "E", "_"]


def test_random_texts_lex_like_postgresql():
    """Where PostgreSQL's scanner accepts a text, the comments and tokens agree with it."""
    rnd = random.Random(7)
    compared = 0
    for _ in range(4000):
        sql = "".join(rnd.choice(_PIECES) for _ in range(rnd.randrange(1, 30)))
        try:
            theirs = pg.scan(sql)
        except Exception:
            continue
        compared += 1
        comments = [(t.start, t.end + 1) for t in theirs if t.name == "C_COMMENT"]
        toks = [sql[t.start:t.end + 1] for t in theirs
                if t.name not in ("C_COMMENT", "SQL_COMMENT")]
        assert list(lx.scan(sql).comments) == comments, sql
        if any(("\n" in t or "\r" in t) and t.endswith("'") for t in toks):
            continue   # 'a'<newline>'b' is one token there, two here (sql.settings joins them)
        assert [t.text for t in lx.tokens(sql)] == toks, sql
    assert compared > 1000


def test_plan_cache_bytes_setting():
    assert config_from_dict({}).proxy.plan_cache_bytes == r.DEFAULT_PLAN_CACHE_BYTES
    assert config_from_dict({"proxy": {"plan_cache_bytes": 4096}}).proxy.plan_cache_bytes == 4096
    with pytest.raises(ConfigError):
        config_from_dict({"proxy": {"plan_cache_bytes": -1}})
    r.configure_cache(0)            # 0: nothing is kept, every text is planned anew
    try:
        r.plan("SELECT 1 /* shard_key: 1 */")
        assert r.cache_usage() == (0, 0)
    finally:
        r.configure_cache(r.DEFAULT_PLAN_CACHE_BYTES)
