"""Fan-out SQL restricted to a shard's own token ranges (resharding's exact reads), and the
catalog field that turns it on."""

from __future__ import annotations

import pytest

from pgshard.ring.catalog import Catalog, Shard
from pgshard.sql.restrict import owned_ranges_text, restrict, restrict_cached


def key_column(name: str):
    return {"t": "id", "public.t": "id", "u": "name", "public.u": "name"}.get(name.lower())


CASES = [
    ("SELECT count(*) FROM t",
     "SELECT count(*) FROM (SELECT * FROM t WHERE pgshard.hash(CAST(id AS text)) <@ "
     "CAST('{(1,5]}' AS int8multirange)) AS t"),
    ("SELECT x.v FROM t AS x WHERE x.id > $1",
     "SELECT x.v FROM (SELECT * FROM t WHERE pgshard.hash(CAST(id AS text)) <@ "
     "CAST('{(1,5]}' AS int8multirange)) AS x WHERE x.id > $1"),
    ("SELECT * FROM public.u JOIN other o ON o.k = u.name",
     "SELECT * FROM (SELECT * FROM public.u WHERE pgshard.hash(CAST(name AS text)) <@ "
     "CAST('{(1,5]}' AS int8multirange)) AS u INNER JOIN other AS o ON o.k = u.name"),
    ("WITH t AS (SELECT 1 AS id) SELECT * FROM t", "WITH t AS (SELECT 1 AS id) SELECT * FROM t"),
    ("SELECT 1", "SELECT 1"),
]


@pytest.mark.parametrize("sql, want", CASES)
def test_restrict(sql, want):
    assert restrict(sql, key_column, "{(1,5]}") == want


def test_owned_ranges_and_cache():
    cat = Catalog.initial([Shard("a", "postgresql://a/x"), Shard("b", "postgresql://b/x")],
                          {"t": "id"}, vnodes_per_shard=4)
    text = owned_ranges_text(cat.ring.ranges("a"))
    assert text.startswith("{(") and text.endswith("]}")
    once = restrict_cached("SELECT count(*) FROM t", cat, "a")
    assert text in once and restrict_cached("SELECT count(*) FROM t", cat, "a") == once
    assert owned_ranges_text([]) == "{}"


def test_catalog_filter_reads_round_trip_and_old_catalogs():
    cat = Catalog.initial([Shard("a", "postgresql://a/x")], {"t": "id"}, vnodes_per_shard=4)
    assert "filter_reads" not in cat.to_json()          # written only when set
    marked = cat.evolve(filter_reads=("b", "a", "a"))
    assert marked.filter_reads == ("a", "b")
    assert Catalog.from_json(marked.to_json()) == marked
    with pytest.raises(ValueError):
        Catalog.from_json({**marked.to_json(), "filter_reads": "a"})
