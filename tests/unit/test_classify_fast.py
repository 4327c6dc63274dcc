"""classify.plan's fast paths (a plain statement with no comment, or with one comment: a
hint) against the slow path (_plan: the scan, the tokens) on many texts: the same Plan, or
the same error (no servers)."""

from __future__ import annotations

import itertools
import random

import pytest

from pgshard.protocol.errors import PgError
from pgshard.sql import classify as r

WORDS = ["SELECT", "select", "Select", "INSERT", "UPDATE", "DELETE", "delete", "WITH",
         "SET", "ſelect", "SELECTX", "(SELECT", "SHOW", "PREPARE", "selecT"]
SEPS = [" ", "\n", "\t", "  ", "\xa0", "", "\r\n"]
BODIES = [
    "abalance FROM pgbench_accounts WHERE aid = 42",
    "* FROM t WHERE id = $1",
    "* FROM t WHERE id = $1 AND x = $2",
    "1", "a$1 FROM t", "$$x$$", "$a$ b $a$", "$", "x FROM t WHERE a = -1",
    "x FROM t WHERE a - -1 > 0", "x -- trailing line comment", "'a;b'", "'it''s'", "E'\\\\'",
    "'a\\' ;", "\"Quoted\" FROM t", "x FROM \"t;\"", "U&'d\\0061t'", "x */ y", "1 * 2 / 3",
    "set_config('a', 'b', false)", "pg_advisory_lock(1)", "pg_temp.f()", "temp", "1; SELECT 2",
    "1;", "1 ;", "INTO t VALUES (1, 2)", "t SET a = 1 WHERE id = 7", "FROM t WHERE id = 9",
    "café FROM t", "x FROM t WHERE a = 1e5", "x\u2028FROM t", "", "$$", "$q$", "'", "\"",
    "E'", "x FROM t WHERE a = $1 AND", "pg_try_advisory_lock(2) FROM t",
    "x FROM t WHERE a = 1 -", "-x FROM t", "x FROM t WHERE a = $", "1 FROM t WHERE a=$12",
    "x FROM t;", "x\fFROM\vt",
]
HINTS = [
    "/* shard_key: 42 */", "/*shard_key:42*/", "/* shard_key = 'o''brien' */",
    "/* shard: shard0 */", "/* shard: shard1 */", "/* shard_key_param: 1 */",
    "/* shard_key: $1 */", "/* shard_key: $x */", "/* consistency: eventual */",
    "/* consistency: EVENTUAL */", "/* consistency: maybe */", "/* shard_key_param: 0 */",
    "/* shard_key_param: x */", "/* a plain comment */", "/**/", "/* */", "/*/ x */",
    "/* shard_key: a b */", "/* shard_key: a-b_c.d:e */", "/* shard_key: 'unterminated */",
    "/* nested /* shard: s */ */", "/* shard_key: ٣ */", "/* shard_key: $٣ */",
    "/* shard: s; */", "/* shard_key: 42 -- x */", "/* temp */", "/* shard_key: '' */",
    "/* unterminated", "/* shard: a */ /* shard: b */", "/*shard:s*/*/", "/* x */*",
    "/* SHARD: s */", "/*\tshard_key\t:\t7\t*/", "/* shard_key: 'a\\' */",
]
TAILS = ["", ";", " ;", ";\n", "; ", ";;", "; ;", ";\xa0", "\xa0", " ", ";SELECT 1", "\n"]


def _outcome(fn, sql):
    try:
        return fn(sql)
    except PgError as exc:
        return (type(exc), exc.sqlstate, str(exc))


def _texts(n: int = 6000):
    """Hinted texts in every position (after, before, inside the statement), with the
    trailing forms, a seeded sample of their combinations; then random joins of the
    same pieces."""
    rng = random.Random(11)
    forms = ["{w}{s}{b} {h}{t}", "{h}{s}{w} {b}{t}", "{w}{s}{h} {b}{t}", "{w} {b}{t} {h}",
             "{w} {b} {h} {b}{t}", "{w}{s}{b}{h}{b}{t}", "{h}{w}{s}{b}{t}", "{w}{h}{s}{b}{t}"]
    out = [f.format(w=w, s=" ", b=b, h=h, t="") for f, w, b, h in
           itertools.product(forms[:1], WORDS[:3], BODIES, HINTS)]
    for _ in range(n):
        out.append(rng.choice(forms).format(w=rng.choice(WORDS), s=rng.choice(SEPS),
                                            b=rng.choice(BODIES), h=rng.choice(HINTS),
                                            t=rng.choice(TAILS)))
    pieces = WORDS + SEPS + BODIES + HINTS + TAILS
    for _ in range(n // 3):
        out.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))))
    return out


TEXTS = _texts()


def test_one_comment_fast_path_gives_what_the_slow_path_gives():
    taken = hinted = errors = 0
    for sql in TEXTS:
        fast = _outcome(r._one_comment, sql)
        if fast is None:
            continue
        taken += 1
        hinted += isinstance(fast, r.Plan) and fast.hinted
        errors += isinstance(fast, tuple)
        assert fast == _outcome(r._plan, sql), sql
    # Not vacuous: the fast path took a good share of the texts, hinted ones and bad
    # hints (errors) among them.
    assert taken > 1500 and hinted > 500 and errors > 100, (taken, hinted, errors)


def test_plan_gives_what_the_slow_path_gives():
    """plan() (cache, no-comment fast path, one-comment fast path) agrees with _plan."""
    r.clear_cache()
    for sql in TEXTS:
        assert _outcome(r.plan, sql) == _outcome(r._plan, sql), sql


@pytest.mark.parametrize("sql", [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 7 /* shard_key: 7 */;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1 /* shard_key_param: 1 */;",
    "/* shard: shard1 */ SELECT count(*) FROM orders",
    "UPDATE t SET v = 1 WHERE id = 3 /* shard_key: 3 */",
    "SELECT 1 /* consistency: eventual */",
    "SELECT 1 /* just a comment */",
])
def test_the_documented_hint_forms_take_the_fast_path(sql):
    fast = r._one_comment(sql)
    assert fast is not None and fast == r._plan(sql)


@pytest.mark.parametrize("sql", [
    "SELECT 'x /* shard: s1 */",                 # the comment is inside a string
    "SELECT $$ /* shard: s1 */ $$",              # inside a dollar quote
    "SELECT 1 -- /* shard: s1 */",               # inside a line comment
    "SELECT 1; SELECT 2 /* shard: s1 */",        # two statements
    "SELECT /* a /* shard: s1 */ */ 1",          # nested
    "SELECT set_config('a', 'b', false) /* shard: s1 */",
    "SET x = 1 /* shard: s1 */",                 # not a plain statement
    "SELECT 1 /* shard: s1 */;\xa0",             # a second 'statement' (not space to the lexer)
])
def test_what_the_fast_path_leaves_to_the_slow_path(sql):
    assert r._one_comment(sql) is None


def test_a_trailing_unicode_space_is_a_second_statement_on_either_path():
    """The lexer's spaces are ASCII ones only: the no-comment fast path must not strip
    U+00A0 (it did: str.rstrip() strips it) and call the text one statement."""
    r.clear_cache()
    assert r.plan("SELECT 1;\xa0") == r._plan("SELECT 1;\xa0")
    assert r.plan("SELECT 1;\xa0").multi


def test_the_one_pass_hint_reading_gives_what_the_general_one_gives():
    """_hint reads `name: bare-value` in one pass (_bare_hint); the general reading gives
    every comment body the same, and the one pass reads a good share of them."""
    rng = random.Random(7)
    parts = ["shard_key", "shard", "shard_key_param", "consistency", "SHARD", "x", "_", "",
             " ", "\t", "\n", "\xa0", ":", "=", "::", "42", "a-b", "a.b", "$1", "'q'", "''",
             "'", "٣", "é", "a b", "-", "*"]
    bodies = [b[2:-2] for b in HINTS if b.startswith("/*") and b.endswith("*/")]
    bodies += ["".join(rng.choice(parts) for _ in range(rng.randint(0, 7))) for _ in range(3000)]
    names, spaces = parts[:6], ["", " ", "  ", "\t", "\n", "\xa0", "\r\n"]
    values = ["42", "a-b_c.d:e", ":x", "$1", "$x", "'o''b'", "'", "a b", "٣", "", "x*", "-"]
    bodies += ["".join((rng.choice(spaces), rng.choice(names), rng.choice(spaces),
                        rng.choice(":=:"), rng.choice(spaces), rng.choice(values),
                        rng.choice(spaces))) for _ in range(3000)]
    fast = [r._hint(b) for b in bodies]
    assert [r._general_hint(b) for b in bodies] == fast
    assert sum(1 for h in fast if h is not None) > 300
    one_pass = [b for b in bodies if r._bare_hint(b) is not None]
    assert len(one_pass) > 300 and all(r._hint(b) is not None or r._bare_hint(b)[0] not in
                                       r._HINT_NAMES for b in one_pass)


@pytest.mark.parametrize("kw", [{}, {"shard_key": b"42"}, {"shard": "s1"}, {"key_param": 2},
                                {"consistency": "eventual"}])
def test_the_fast_paths_plan_is_a_plan_like_any_other(kw):
    """_hinted_plan builds its Plan without the frozen __init__: the same type, fields,
    equality and hash, and as frozen."""
    import dataclasses

    p, q = r._hinted_plan("SELECT", **kw), r.Plan(r.STATEMENT, "SELECT", **kw)
    assert type(p) is r.Plan and p == q and hash(p) == hash(q)
    assert dataclasses.astuple(p) == dataclasses.astuple(q)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.shard = "elsewhere"


@pytest.mark.parametrize("word, read, ddl", [("SELECT", True, False), ("WITH", True, False),
                                             ("CREATE", False, True), ("INSERT", False, False)])
def test_is_read_and_is_ddl_are_set_on_every_path(word, read, ddl):
    """is_read/is_ddl are fields set at construction: by __init__, by replace() and by the
    fast path's _hinted_plan alike."""
    import dataclasses

    made = [r.Plan(r.STATEMENT, word), r._hinted_plan(word, shard="s1"),
            dataclasses.replace(r.Plan(r.STATEMENT, word), sticky="x")]
    assert [(p.is_read, p.is_ddl) for p in made] == [(read, ddl)] * 3
    r.clear_cache()
    for sql in TEXTS:
        p = r.plan(sql) if not isinstance(_outcome(r.plan, sql), tuple) else None
        if isinstance(p, r.Plan):
            assert (p.is_read, p.is_ddl) == (p.first_word in ("SELECT", "WITH", "VALUES",
                                             "TABLE", "EXPLAIN", "SHOW", "FETCH"),
                                             p.first_word in ("CREATE", "ALTER", "DROP",
                                             "TRUNCATE", "COMMENT", "GRANT", "REVOKE")), sql
