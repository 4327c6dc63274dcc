"""A fan-out read rewritten for one shard so that it sees only the rows of the token ranges
that shard owns: every sharded table it reads becomes a subselect filtered by the token of
its shard key (used while a resharding job has rows of a range on two shards)."""

from __future__ import annotations

from collections.abc import Callable

from pglast import ast, parse_sql
from pglast.stream import RawStream
from pglast.visitors import Visitor


class _Restrict(Visitor):
    def __init__(self, key_column: Callable[[str], str | None], ranges: str, ctes: set[str]):
        super().__init__()
        self.key_column = key_column
        self.ranges = ranges
        self.ctes = ctes

    def visit_RangeVar(self, ancestors, node: ast.RangeVar):
        name = node.relname
        if node.schemaname is None and name in self.ctes:
            return None
        qualified = f"{node.schemaname}.{name}" if node.schemaname else name
        key = self.key_column(qualified)
        if key is None:
            return None
        rel = RawStream()(ast.RangeVar(schemaname=node.schemaname, relname=name, inh=True,
                                       relpersistence="p"))
        col = '"' + key.replace('"', '""') + '"'
        sub = parse_sql(f"SELECT * FROM {rel} WHERE pgshard.hash(({col})::text) <@ "
                        f"'{self.ranges}'::int8multirange")[0].stmt
        alias = node.alias or ast.Alias(aliasname=name)
        return ast.RangeSubselect(lateral=False, subquery=sub, alias=alias)


def _cte_names(tree) -> set[str]:
    names: set[str] = set()

    class Ctes(Visitor):
        def visit_CommonTableExpr(self, ancestors, node):
            names.add(node.ctename)

    Ctes()(tree)
    return names


def restrict(sql: str, key_column: Callable[[str], str | None], ranges: str) -> str:
    """sql with each sharded table (key_column(name) not None) read only where its key's
    token lies in ranges (an int8multirange literal's text, e.g. "{(0,10],(20,30]}")."""
    tree = parse_sql(sql)
    _Restrict(key_column, ranges, _cte_names(tree))(tree)
    return RawStream()(tree)


def owned_ranges_text(spans) -> str:
    """Token spans (lo, hi] as an int8multirange literal's text."""
    return "{" + ",".join(f"({s.lo},{s.hi}]" for s in spans) + "}"


def restrict_cached(sql: str, catalog, shard: str) -> str:
    """restrict() for one shard of a catalog, memoised per (catalog version, shard, text)."""
    key = (catalog.version, shard, sql)
    hit = _CACHE.get(key)
    if hit is None:
        ranges = owned_ranges_text(catalog.ring.ranges(shard))
        hit = restrict(sql, catalog.key_column, ranges)
        if len(_CACHE) > 512:
            _CACHE.clear()
        _CACHE[key] = hit
    return hit


_CACHE: dict[tuple[int, str, str], str] = {}
