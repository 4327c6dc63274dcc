"""How a SELECT that runs on every shard is rewritten for the shards and merged back.

Strategy: the merge works on output columns. Whatever the merge needs that the client did
not ask for (an ORDER BY expression, a GROUP BY key, the sum and count behind an avg) is
appended to the shard's select list as a hidden column and dropped after merging. Indexes
in a MergeSpec are 0-based positions in the shard's row; when the select list holds a `*`
(whose width only the shard's RowDescription tells) the columns after it, hidden ones
included, are given as negative indexes counted from the end of the row, as in Python.

Each shard returns LIMIT + OFFSET rows without OFFSET, sorted by the original ORDER BY; a
grouped query returns all its partial groups (no ORDER BY, LIMIT or OFFSET on the shards).
A client that binds per-column result formats must get one more format per hidden column.

A statement PostgreSQL itself rejects (ORDER BY position 5 of 2 columns, LIMIT -1, a SELECT
DISTINCT ordered by a column it does not return) runs unchanged, so the client gets the
shards' own error; its MergeSpec carries `unmergeable`, and should a shard accept it after
all, the merge refuses rather than guess.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from pglast import ast
from pglast.enums import LimitOption, SetOperation, SortByDir, SortByNulls
from pglast.stream import RawStream

from pgshard.sql.nodes import func_name, has_aggregate, has_window, is_aggregate

COMBINABLE = frozenset({"count", "sum", "min", "max", "avg"})


@dataclass(frozen=True, slots=True)
class MergeSpec:
    """How to combine per-shard results of one fanned-out SELECT (indexes per module doc)."""

    order_by: tuple[tuple[int, bool, bool | None], ...] = ()  # (index, descending, nulls_first)
    limit: int | None = None
    offset: int = 0
    group_by: tuple[int, ...] = ()
    aggregates: tuple[tuple[int, str], ...] = ()   # (index, count|sum|min|max|avg)
    avg_parts: tuple[tuple[int, int, int], ...] = ()   # (avg index, sum index, count index)
    hidden: int = 0
    distinct: bool = False
    unmergeable: str | None = None     # run unchanged; PostgreSQL is expected to reject it

    @property
    def grouped(self) -> bool:
        """Rows are grouped and their aggregates combined (GROUP BY or aggregate calls)."""
        return bool(self.group_by or self.aggregates)


class _Refuse(Exception):
    pass


class _Invalid(_Refuse):
    """The statement is an error on PostgreSQL too: let the shards say so."""


def plan_fanout(stmt: ast.SelectStmt) -> tuple[MergeSpec | None, str | None, str | None]:
    """(merge spec, shard SQL or None if the statement runs unchanged, refusal reason).

    Rewrites stmt in place (the caller parsed it for this call alone)."""
    try:
        if stmt.op != SetOperation.SETOP_NONE:
            return _set_operation(stmt)
        return _Planner(stmt).plan()
    except _Invalid as exc:
        return MergeSpec(unmergeable=str(exc)), None, None
    except _Refuse as exc:
        return None, None, str(exc)


def _set_operation(stmt: ast.SelectStmt):
    if stmt.op != SetOperation.SETOP_UNION:
        raise _Refuse("INTERSECT and EXCEPT cannot be computed across shards")
    leftmost = _check_arms(stmt.larg, stmt.all)
    _check_arms(stmt.rarg, stmt.all)
    targets = list(leftmost.targetList or ())
    planner = _Planner(stmt, targets)
    order = tuple(planner.sort_item(s, allow_hidden=False) for s in stmt.sortClause or ())
    limit, offset = _limits(stmt)
    changed = _shard_limit(stmt, limit, offset)
    spec = MergeSpec(order_by=tuple((planner.index(r), d, n) for r, d, n in order),
                     limit=limit, offset=offset, distinct=not stmt.all)
    return spec, RawStream()(stmt) if changed else None, None


def _check_arms(stmt: ast.SelectStmt, top_all: bool) -> ast.SelectStmt:
    """The leftmost leaf SELECT, after refusing arms that are not plain row producers."""
    if stmt.op == SetOperation.SETOP_NONE:
        if (stmt.groupClause or stmt.havingClause or stmt.distinctClause or stmt.windowClause
                or stmt.limitCount is not None or stmt.limitOffset is not None
                or has_aggregate(stmt.targetList) or has_window(stmt.targetList)):
            raise _Refuse("a UNION arm that aggregates, deduplicates or limits rows cannot "
                          "be merged across shards")
        return stmt
    if stmt.op != SetOperation.SETOP_UNION:
        raise _Refuse("INTERSECT and EXCEPT cannot be computed across shards")
    if top_all and not stmt.all:
        raise _Refuse("UNION nested inside UNION ALL cannot be deduplicated across shards")
    if stmt.limitCount is not None or stmt.limitOffset is not None:
        raise _Refuse("a UNION arm with LIMIT/OFFSET cannot be merged across shards")
    left = _check_arms(stmt.larg, top_all)
    _check_arms(stmt.rarg, top_all)
    return left


def _limits(stmt: ast.SelectStmt) -> tuple[int | None, int]:
    if stmt.limitOption == LimitOption.LIMIT_OPTION_WITH_TIES:
        raise _Refuse("FETCH ... WITH TIES cannot be merged across shards")
    limit = _const_int(stmt.limitCount, "LIMIT")
    offset = _const_int(stmt.limitOffset, "OFFSET")
    return limit, offset or 0


def _const_int(node, what: str) -> int | None:
    if node is None or isinstance(node, ast.A_Const) and node.isnull:
        return None
    if isinstance(node, ast.A_Const):
        v = node.val
        if isinstance(v, ast.Integer) and v.ival >= 0:
            return v.ival
        if isinstance(v, ast.Integer):
            raise _Invalid(f"{what} must not be negative")
        if isinstance(v, ast.Float) and v.fval.isdigit():
            return int(v.fval)
    raise _Refuse(f"{what} must be a non-negative integer constant to merge across shards")


def _shard_limit(stmt: ast.SelectStmt, limit: int | None, offset: int) -> bool:
    """Shards return limit + offset rows and no offset; True if that changed the statement."""
    changed = False
    if limit is not None and offset:
        stmt.limitCount = ast.A_Const(isnull=False, val=ast.Integer(limit + offset))
        changed = True
    if stmt.limitOffset is not None:
        stmt.limitOffset = None
        changed = True
    return changed


class _Planner:
    """Plans a plain (non set-operation) SELECT; column refs are ("v", entry) | ("h", n)."""

    def __init__(self, stmt: ast.SelectStmt, targets: list | None = None):
        self.stmt = stmt
        self.targets = list(stmt.targetList or ()) if targets is None else targets
        self.hidden: list[ast.ResTarget] = []
        self.aggs: list[tuple[tuple[str, int], str]] = []
        self.avgs: list[tuple[tuple[str, int], tuple[str, int], tuple[str, int]]] = []
        self.grouped = False
        stars = [j for j, t in enumerate(self.targets) if _is_star(t.val)]
        self.first_star = stars[0] if stars else None
        self.last_star = stars[-1] if stars else None

    def plan(self):
        stmt = self.stmt
        if stmt.distinctClause and stmt.distinctClause != (None,):
            raise _Refuse("DISTINCT ON cannot be merged across shards")
        if stmt.havingClause is not None:
            raise _Refuse("HAVING cannot be evaluated across shards")
        if any(isinstance(g, ast.GroupingSet) for g in stmt.groupClause or ()):
            raise _Refuse("GROUPING SETS, ROLLUP and CUBE cannot be merged across shards")
        if has_window((stmt.targetList, stmt.sortClause)):
            raise _Refuse("window functions cannot be computed across shards")
        self.grouped = bool(stmt.groupClause) or has_aggregate(
            (stmt.targetList, stmt.sortClause))
        for j, t in enumerate(self.targets):
            if not _is_star(t.val):
                self._aggregate(("v", j), t.val)
        group = [self._group_item(g) for g in stmt.groupClause or ()]
        order = [self.sort_item(s, allow_hidden=True) for s in stmt.sortClause or ()]
        limit, offset = _limits(stmt)
        changed = bool(self.hidden)
        if self.hidden:
            stmt.targetList = tuple(self.targets) + tuple(self.hidden)
        if self.grouped:
            changed = changed or stmt.sortClause is not None or stmt.limitCount is not None \
                or stmt.limitOffset is not None
            stmt.sortClause = stmt.limitCount = stmt.limitOffset = None
            stmt.limitOption = LimitOption.LIMIT_OPTION_DEFAULT
        else:
            changed = _shard_limit(stmt, limit, offset) or changed
        ix = self.index
        spec = MergeSpec(
            order_by=tuple((ix(r), d, n) for r, d, n in order), limit=limit, offset=offset,
            group_by=tuple(dict.fromkeys(ix(r) for r in group)),
            aggregates=tuple((ix(r), k) for r, k in self.aggs),
            avg_parts=tuple((ix(a), ix(s), ix(c)) for a, s, c in self.avgs),
            hidden=len(self.hidden), distinct=stmt.distinctClause == (None,))
        return spec, RawStream()(stmt) if changed else None, None

    # -- output columns ----------------------------------------------------------------

    def index(self, ref: tuple[str, int]) -> int:
        kind, n = ref
        hidden = len(self.hidden)
        if kind == "h":
            return len(self.targets) + n if self.first_star is None else n - hidden
        if self.first_star is None or n < self.first_star:
            return n
        return n - len(self.targets) - hidden

    def _known(self, j: int) -> bool:
        t = self.targets[j]
        return not _is_star(t.val) and (self.first_star is None or j < self.first_star
                                        or j > self.last_star)

    def _by_expr(self, expr) -> int | None:
        for j, t in enumerate(self.targets):
            if self._known(j) and t.val == expr:
                return j
        return None

    def _by_name(self, name: str) -> int | None:
        for j, t in enumerate(self.targets):
            if _output_name(t) == name:
                return j if self._known(j) else None
        return None

    def _by_position(self, node) -> int | None:
        if not (isinstance(node, ast.A_Const) and isinstance(node.val, ast.Integer)):
            return None
        p = node.val.ival - 1
        if p < 0 or (self.first_star is None and p >= len(self.targets)):
            raise _Invalid(f"ORDER/GROUP BY position {p + 1} is not in the select list")
        if self.first_star is not None and p >= self.first_star:
            raise _Refuse("ORDER/GROUP BY position after a * cannot be merged across shards")
        return p

    def _hide(self, expr) -> tuple[str, int]:
        ref = ("h", len(self.hidden))
        self.hidden.append(ast.ResTarget(val=expr))
        if self.grouped:
            self._aggregate(ref, expr)
        return ref

    def _aggregate(self, ref, expr) -> None:
        """Record an output expression of a grouped query: an aggregate to combine or a
        value that is constant within its group."""
        if isinstance(expr, ast.FuncCall) and is_aggregate(expr):
            name = func_name(expr)
            if name not in COMBINABLE or expr.agg_within_group:
                raise _Refuse(f"aggregate {name}() cannot be combined across shards")
            if expr.agg_distinct:
                raise _Refuse(f"{name}(DISTINCT ...) cannot be combined across shards")
            if has_aggregate(expr.args):
                raise _Refuse("nested aggregate calls cannot be combined across shards")
            self.aggs.append((ref, name))
            if name == "avg":
                s = self._hide(_agg_like(expr, "sum"))
                c = self._hide(_agg_like(expr, "count"))
                self.avgs.append((ref, s, c))
        elif has_aggregate(expr):
            raise _Refuse("an expression over aggregate results cannot be combined across "
                          "shards; select the aggregates themselves")

    # -- clauses -----------------------------------------------------------------------

    def sort_item(self, sb: ast.SortBy, allow_hidden: bool):
        if sb.sortby_dir == SortByDir.SORTBY_USING:
            raise _Refuse("ORDER BY ... USING cannot be merged across shards")
        node = sb.node
        j = self._by_position(node)
        if j is None and isinstance(node, ast.ColumnRef) and len(node.fields) == 1 \
                and isinstance(node.fields[0], ast.String):
            j = self._by_name(node.fields[0].sval)
        if j is None:
            j = self._by_expr(node)
        if j is not None and self._known(j):
            ref = ("v", j)
        elif allow_hidden and self.stmt.distinctClause == (None,):
            # Hiding the sort expression would make the shards deduplicate on it too.
            raise _Invalid("for SELECT DISTINCT, ORDER BY expressions must appear in the "
                           "select list")
        elif allow_hidden:
            ref = self._hide(node)
        else:
            raise _Refuse("ORDER BY of a UNION must name an output column to be merged "
                          "across shards")
        desc = sb.sortby_dir == SortByDir.SORTBY_DESC
        nulls = {SortByNulls.SORTBY_NULLS_FIRST: True,
                 SortByNulls.SORTBY_NULLS_LAST: False}.get(sb.sortby_nulls)
        return ref, desc, nulls

    def _group_item(self, node):
        # A GROUP BY name means an input column before an output alias (unlike ORDER BY).
        j = self._by_position(node)
        if j is None:
            j = self._by_expr(node)
        if j is None and isinstance(node, ast.ColumnRef) and len(node.fields) == 1 \
                and isinstance(node.fields[0], ast.String):
            j = self._by_name(node.fields[0].sval)
        if j is not None and self._known(j):
            if has_aggregate(self.targets[j].val):
                raise _Refuse("GROUP BY an aggregate is not allowed")
            return ("v", j)
        return self._hide(node)


def _agg_like(call: ast.FuncCall, name: str) -> ast.FuncCall:
    out = copy.deepcopy(call)
    out.funcname = (ast.String(name),)
    out.agg_order = None
    return out


def _is_star(val) -> bool:
    return isinstance(val, ast.ColumnRef) and isinstance(val.fields[-1], ast.A_Star)


def _output_name(t: ast.ResTarget) -> str:
    """PostgreSQL's column name for a select-list entry (FigureColname, the common cases)."""
    if t.name:
        return t.name
    v = t.val
    while isinstance(v, ast.TypeCast):
        if isinstance(v.arg, ast.ColumnRef | ast.FuncCall):
            v = v.arg
        else:
            return v.typeName.names[-1].sval
    if isinstance(v, ast.ColumnRef) and isinstance(v.fields[-1], ast.String):
        return v.fields[-1].sval
    if isinstance(v, ast.FuncCall):
        return v.funcname[-1].sval
    return "?column?"

