"""The user tables a statement names (pglast), to say which declaration is missing."""

from __future__ import annotations

from pglast import ast, parse_sql
from pglast.parser import ParseError

from pgshard.sql.textmemo import text_memo

_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})


# Bounded by bytes of text; texts above 64 KiB are parsed each time.
CACHE_BYTES = 8 * 1024 * 1024
MAX_CACHED_TEXT = 64 * 1024


@text_memo(CACHE_BYTES, MAX_CACHED_TEXT, lambda names: sum(len(n) + 56 for n in names))
def user_relations(sql: str) -> tuple[str, ...]:
    """Tables and views named by sql, minus system catalogs and CTE names; () if unparsable."""
    try:
        stmts = parse_sql(sql)
    except (ParseError, RecursionError):
        return ()
    found: list[str] = []
    ctes: set[str] = set()
    _walk(stmts, found, ctes)
    seen = []
    for name in found:
        if name.split(".")[-1] not in ctes and name not in seen:
            seen.append(name)
    return tuple(seen)


def _walk(node, found: list[str], ctes: set[str]) -> None:
    if isinstance(node, (list, tuple)):
        for x in node:
            _walk(x, found, ctes)
        return
    if not isinstance(node, ast.Node):
        return
    if isinstance(node, ast.RangeVar):
        schema = node.schemaname
        name = node.relname or ""
        if schema in _SYSTEM_SCHEMAS or (schema is None and name.startswith("pg_")):
            return
        found.append(f"{schema}.{name}" if schema and schema != "public" else name)
        return
    if isinstance(node, ast.CommonTableExpr) and node.ctename:
        ctes.add(node.ctename)
    for attr in node.__slots__:
        _walk(getattr(node, attr, None), found, ctes)
