"""SQL-level PREPARE and EXECUTE read with pglast, pure: the statement a PREPARE defines and
the arguments an EXECUTE gives it, so that an EXECUTE is routed by the key its arguments
name, like the statement itself would be."""

from __future__ import annotations

from pglast import ast, parse_sql
from pglast.parser import ParseError
from pglast.stream import RawStream

from pgshard.sql.textmemo import text_memo


@text_memo(2 * 1024 * 1024, 64 * 1024)
def prepared_statement(sql: str) -> tuple[str, str] | None:
    """(name, the statement's SQL) of `PREPARE name [(types)] AS statement`, else None."""
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return None
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, ast.PrepareStmt):
        return None
    node = stmts[0].stmt
    return node.name, RawStream()(node.query)


@text_memo(2 * 1024 * 1024, 64 * 1024)
def execute_call(sql: str) -> tuple[str, tuple[bytes | None | object, ...]] | None:
    """(name, arguments) of `EXECUTE name [(args)]`: each argument as text bytes for a
    constant (None for NULL), or NOT_CONSTANT for an expression; None if sql is not one."""
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return None
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, ast.ExecuteStmt):
        return None
    node = stmts[0].stmt
    return node.name, tuple(_constant(p) for p in node.params or ())


NOT_CONSTANT = object()


def _constant(node):
    while isinstance(node, ast.TypeCast):   # '5'::bigint
        node = node.arg
    if isinstance(node, ast.A_Const):
        if node.isnull:
            return None
        v = node.val
        for attr in ("sval", "ival", "fval", "bsval"):
            if hasattr(v, attr) and getattr(v, attr) is not None:
                return str(getattr(v, attr)).encode()
        if hasattr(v, "boolval"):
            return b"true" if v.boolval else b"false"
    return NOT_CONSTANT
