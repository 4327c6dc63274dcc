"""pglast AST helpers shared by statement analysis and fan-out planning."""

from __future__ import annotations

from pglast import ast

# Aggregates that make a query not row-local. Unknown (user-defined) aggregates cannot be
# told from plain functions by name; they are treated as plain functions.
AGGREGATES = frozenset({
    "count", "sum", "min", "max", "avg", "array_agg", "string_agg", "json_agg", "jsonb_agg",
    "json_object_agg", "jsonb_object_agg", "json_objectagg", "json_arrayagg", "bool_and",
    "bool_or", "every", "bit_and", "bit_or", "bit_xor", "stddev", "stddev_pop", "stddev_samp",
    "variance", "var_pop", "var_samp", "corr", "covar_pop", "covar_samp", "regr_avgx",
    "regr_avgy", "regr_count", "regr_intercept", "regr_r2", "regr_slope", "regr_sxx",
    "regr_sxy", "regr_syy", "xmlagg", "range_agg", "range_intersect_agg", "any_value",
    "percentile_cont", "percentile_disc", "mode", "rank", "dense_rank", "percent_rank",
    "cume_dist", "grouping",
})


def func_name(node: ast.FuncCall) -> str:
    """The unqualified, lower-case name of a function call."""
    return node.funcname[-1].sval.lower()


def is_aggregate(node) -> bool:
    """A FuncCall that is an aggregate call (not a window call)."""
    return isinstance(node, ast.FuncCall) and node.over is None and (
        node.agg_star or node.agg_distinct or node.agg_within_group
        or node.agg_filter is not None or bool(node.agg_order)
        or func_name(node) in AGGREGATES)


def walk_expr(node, visit) -> None:
    """Call visit(n) on node and every node under it, not entering subqueries; visit returns
    True to stop descending."""
    if node is None:
        return
    if isinstance(node, tuple | list):
        for x in node:
            walk_expr(x, visit)
        return
    if not isinstance(node, ast.Node) or visit(node):
        return
    if isinstance(node, ast.SubLink | ast.SelectStmt | ast.RangeSubselect):
        return
    for name in node.__slots__:
        walk_expr(getattr(node, name), visit)


def has_aggregate(nodes) -> bool:
    """Whether an aggregate call occurs in nodes (outside subqueries)."""
    found = []

    def visit(n):
        if is_aggregate(n):
            found.append(n)
            return True
        return False
    walk_expr(nodes, visit)
    return bool(found)


def has_window(nodes) -> bool:
    """Whether a window function call occurs in nodes (outside subqueries)."""
    found = []

    def visit(n):
        if isinstance(n, ast.FuncCall) and n.over is not None:
            found.append(n)
            return True
        return False
    walk_expr(nodes, visit)
    return bool(found)
