"""The scopes and FROM items the confinement walk (sql.confine) keeps per query level, and the
pglast node helpers it reads statements with, pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from pglast import ast
from pglast.enums import BoolExprType, SetOperation

from pgshard.sql.keys import normalize_table


@dataclass(slots=True)
class Item:
    """A FROM entry visible at one level: its name, table (if a table) and key columns."""

    alias: str
    table: str | None                           # normalized table name (base tables only)
    keys: dict[str, int]                        # key column name -> rte


@dataclass(slots=True)
class Sub:
    """What a (sub)query exposes to the level around it."""

    row_local: bool
    exports: dict[str, int]                     # output column name -> rte of a key column
    rtes: frozenset[int] = frozenset()


@dataclass(slots=True)
class Scope:
    """One query level: its FROM items, its CTEs and the rtes made at it."""

    parent: Scope | None
    items: list[Item] = field(default_factory=list)
    ctes: dict[str, Sub | None] = field(default_factory=dict)   # None: recursive self-ref
    rtes: set[int] = field(default_factory=set)

    def cte(self, name: str):
        s = self
        while s is not None:
            if name in s.ctes:
                return True, s.ctes[name]
            s = s.parent
        return False, None



def table_name(rv: ast.RangeVar) -> str:
    return normalize_table(f"{rv.schemaname}.{rv.relname}" if rv.schemaname else rv.relname)


def and_terms(expr):
    if expr is None:
        return []
    if isinstance(expr, ast.BoolExpr) and expr.boolop == BoolExprType.AND_EXPR:
        return [t for a in expr.args for t in and_terms(a)]
    return [expr]


def pin_size(pin) -> int:
    return sum(len(ks) for _, ks in pin)


def union_refs(refs) -> tuple:
    return tuple(dict.fromkeys(refs))


def ref_name(col: ast.ColumnRef, alias: str | None) -> str:
    return alias or col.fields[-1].sval


def from_values(sel: ast.SelectStmt, val) -> list | None:
    """INSERT … SELECT a::int, b FROM (VALUES (…), …) AS v(a, b, …): the node each VALUES row
    gives the select-list column val, else None."""
    if not sel.fromClause or len(sel.fromClause) != 1 or sel.whereClause is not None \
            or sel.groupClause or sel.havingClause is not None or sel.distinctClause \
            or sel.limitCount is not None or sel.limitOffset is not None:
        return None
    rs = sel.fromClause[0]
    if not isinstance(rs, ast.RangeSubselect) or rs.lateral or rs.alias is None \
            or not rs.alias.colnames:
        return None
    sub = rs.subquery
    if not isinstance(sub, ast.SelectStmt) or not sub.valuesLists:
        return None
    if isinstance(val, ast.TypeCast):
        val = val.arg
    if not isinstance(val, ast.ColumnRef) or not 1 <= len(val.fields) <= 2 \
            or not all(isinstance(f, ast.String) for f in val.fields):
        return None
    if len(val.fields) == 2 and val.fields[0].sval != rs.alias.aliasname:
        return None
    names = [c.sval for c in rs.alias.colnames]
    if val.fields[-1].sval not in names:
        return None
    k = names.index(val.fields[-1].sval)
    return [row[k] if k < len(row) else None for row in sub.valuesLists]


def has_star(targets) -> bool:
    return any(isinstance(t.val, ast.ColumnRef) and isinstance(t.val.fields[-1], ast.A_Star)
               for t in targets or ())


def all_ctes(scope: Scope) -> dict:
    """A FROM subquery sees the CTEs of its level (and, through parents, the outer ones)."""
    return dict(scope.ctes)


def rename_exports(exports: dict[str, int], query, colnames) -> dict[str, int]:
    """Exports of a subquery whose output columns are renamed by an alias column list."""
    names = [c if isinstance(c, str) else c.sval for c in colnames]
    if not isinstance(query, ast.SelectStmt) or query.op != SetOperation.SETOP_NONE \
            or has_star(query.targetList):
        return {}
    out = {}
    for i, t in enumerate(query.targetList or ()):
        name = t.name or (t.val.fields[-1].sval if isinstance(t.val, ast.ColumnRef) else None)
        if name in exports:
            out[names[i] if i < len(names) else name] = exports[name]
    return out
