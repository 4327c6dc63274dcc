"""The literal fast path routes exactly as the full analysis does, or declines."""

from __future__ import annotations

import pytest

from pgshard.ring import hashing
from pgshard.ring.catalog import Catalog, Shard
from pgshard.sql import analysis as sp
from pgshard.sql import fastkey

CAT = Catalog.initial([Shard(f"s{i}", f"postgresql://u@127.0.0.1:{5432 + i}/d") for i in range(3)],
                      {"orders": "id", "users": "uid"})


def full_path(sql: str) -> str | None:
    a = sp.analyze(sql, CAT.tables)
    if a.keys is None:
        return None
    owners = {CAT.ring.owner(hashing.token(k.resolve())) for k in a.keys}
    return owners.pop() if len(owners) == 1 else None


@pytest.mark.parametrize("sql", [
    "SELECT * FROM orders WHERE id = 42",
    "SELECT * FROM orders WHERE id = 0042",
    "SELECT * FROM orders WHERE id = 42 AND note = 'x'",
    "SELECT * FROM orders WHERE note = 'a''b' AND id = 7 LIMIT 3",
    "UPDATE orders SET qty = qty + 5 WHERE id = 99",
    "INSERT INTO orders (id, qty) VALUES (5, 10)",
    "SELECT * FROM orders WHERE id IN (1, 1, 1)",
    "SELECT * FROM orders o JOIN users u ON u.uid = o.id WHERE o.id = 8",
])
def test_fast_path_agrees(sql):
    fast = fastkey.route(sql, CAT, ())
    assert fast is not None
    assert fast == full_path(sql)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM orders WHERE id = -5",            # sign folded into the constant
    "SELECT * FROM orders WHERE id = '42'",          # string: column type decides
    "SELECT * FROM orders WHERE id = 42::bigint",    # cast
    "SELECT * FROM orders WHERE id = 4.2",
    "DELETE FROM orders WHERE id = 123456789012",    # beyond int4: the scanner says FCONST
    "SELECT * FROM orders WHERE id IN (1, 2, 3, 4, 5, 6, 7, 8)",   # several shards
    "SELECT * FROM orders",
    "SELECT 1",
    "SELECT * FROM orders WHERE id = $1",
    "this is not sql 42",
])
def test_fast_path_declines(sql):
    assert fastkey.route(sql, CAT, ()) is None or sql.endswith("(1, 1, 1)")


def test_existing_params_shift_numbering():
    sql = "SELECT * FROM orders WHERE note = $1 AND id = 77"
    assert fastkey.route(sql, CAT, ()) == CAT.ring.owner(hashing.token(b"77"))


# ------------------------------------------------------------ the normalizing pass

@pytest.mark.parametrize("sql", [
    "SELECT * FROM orders WHERE id = 1 AND note = E'x'",     # a prefixed string
    "SELECT * FROM orders WHERE id = 1 AND note = 'a\\b'",   # a backslash
    "SELECT * FROM orders WHERE id = 1 AND note = $$x$$",    # a dollar quote
    "SELECT * FROM orders WHERE id = 1 AND note = $q$x$q$",
    "SELECT * FROM orders WHERE id = - /* c */ 5",           # a sign, even across a comment
    "SELECT * FROM orders WHERE id = 0x1F", "SELECT * FROM orders WHERE id = 1_000",
    "SELECT * FROM orders WHERE id = 12abc", "SELECT * FROM orders WHERE id = $1x AND a = 2",
    "SELECT * FROM orders WHERE id = 1 AND note = 'open", "SELECT 1 /* open",
    "SELECT * FROM orders WHERE id = 1e", "SELECT * FROM \"open WHERE id = 1",
    "SELECT * FROM orders WHERE id = $99999999999 AND a = 1",
    "SELECT * FROM orders", "SELECT * FROM orders WHERE id = $1",
])
def test_the_normalizing_pass_declines_what_it_does_not_read(sql):
    assert fastkey.normalize(sql) is None


def _texts(n: int = 4000) -> list[str]:
    """Statements on the catalog's tables with random values, spacing and comments."""
    import random
    rng = random.Random(5)
    values = ["42", "0042", "7", "0", "2147483647", "2147483648", "123456789012", "'x'",
              "'a''b'", "''", "1.5", ".5", "1e3", "2.", "1.5E-3", "$1", "$2", "-3", "- 4",
              "E'x'", "$$y$$", "'\\'", "x'1F'", "0x1F", "'é'", "3::int", "CAST(5 AS int)",
              "(6)", "8 + 1", "$1x"]
    seps = [" ", "  ", "\n", "\t", " /* c */ ", " /* /* n */ */ ", " -- c\n", ""]
    preds = ["id = {v}", "id={v}", "note = {v}", "qty > {v}", "id IN ({v}, {v})",
             "id = {v} AND note = {v}", "(id = {v} OR id = {v})", "\"id\" = {v}"]
    stmts = ["SELECT * FROM orders WHERE {p}", "SELECT qty{s}FROM orders WHERE {p} LIMIT {v}",
             "UPDATE orders SET qty = {v} WHERE {p}", "DELETE FROM orders WHERE {p}",
             "INSERT INTO orders (id, qty) VALUES ({v},{s}{v})",
             "SELECT * FROM users u JOIN orders o ON o.id = u.uid WHERE u.uid = {v}",
             "SELECT * FROM users WHERE uid = {v}{s}AND name = {v}", "{s}SELECT {v}{s}",
             "SELECT * FROM orders WHERE {p};", "SELECT * FROM orders WHERE {p}; SELECT {v}"]
    out = []
    for _ in range(n):
        t = rng.choice(stmts).replace("{p}", rng.choice(preds))
        while "{v}" in t or "{s}" in t:
            t = t.replace("{v}", rng.choice(values), 1).replace("{s}", rng.choice(seps), 1)
        out.append(t.replace(" ", rng.choice(seps) or " ", rng.randint(0, 2)))
    return out


def test_the_normalizing_pass_gives_what_libpg_query_gives():
    """Where the pass reads a text, libpg_query's normalize (the reading it replaces)
    gives the same normalized text."""
    from pglast import parser
    read = 0
    for sql in _texts():
        n = fastkey.normalize(sql)
        if n is None:
            continue
        try:
            expected = parser.normalize(sql)
        except Exception:
            continue        # a text PostgreSQL cannot parse: the analysis declines it too
        read += 1
        assert n[0] == expected, sql
    assert read > 800, read


def test_the_fast_path_never_routes_other_than_the_full_path():
    routed = 0
    for sql in _texts():
        fast = fastkey.route(sql, CAT, ())
        if fast is None:
            continue
        routed += 1
        assert fast == full_path(sql), sql
    assert routed > 100, routed
