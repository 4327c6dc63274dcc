"""`COPY table [(columns)] TO STDOUT` across shards, pure: what each shard runs when it must
answer only for the ranges it owns (resharding), as `COPY (SELECT …) TO STDOUT`."""

from __future__ import annotations

from pglast import ast, parse_sql
from pglast.stream import RawStream


def as_select(sql: str) -> str:
    """The SELECT that reads what `COPY table [(columns)] TO STDOUT …` writes."""
    node = parse_sql(sql)[0].stmt
    cols = ", ".join(RawStream()(ast.ColumnRef(fields=(c,))) for c in node.attlist or ()) or "*"
    return f"SELECT {cols} FROM {RawStream()(node.relation)}"


def with_query(sql: str, select_sql: str) -> str:
    """The COPY statement sql with its table replaced by the query select_sql (options kept)."""
    node = parse_sql(sql)[0].stmt
    query = parse_sql(select_sql)[0].stmt
    return RawStream()(ast.CopyStmt(relation=None, query=query, attlist=None, is_from=False,
                                    is_program=False, filename=None, options=node.options,
                                    whereClause=None))


def restricted(sql: str, restrict_select) -> str:
    """sql with its rows limited by restrict_select(select_sql) -> select_sql."""
    return with_query(sql, restrict_select(as_select(sql)))
