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
    node = _single(sql, ast.PrepareStmt)
    return None if node is None else (node.name, RawStream()(node.query))


@text_memo(2 * 1024 * 1024, 64 * 1024)
def execute_call(sql: str) -> tuple[str, tuple[bytes | None | object, ...]] | None:
    """(name, arguments) of `EXECUTE name [(args)]`: each argument as text bytes for a
    constant (None for NULL), or NOT_CONSTANT for an expression; None if sql is not one."""
    node = _single(sql, ast.ExecuteStmt)
    return None if node is None else (node.name, tuple(_constant(p) for p in node.params or ()))


def _single(sql: str, cls):
    """The one statement of sql if it is a cls node, else None."""
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return None
    return stmts[0].stmt if len(stmts) == 1 and isinstance(stmts[0].stmt, cls) else None


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
