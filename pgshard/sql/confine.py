"""Which shard keys a parsed statement is confined to, and whether its sharded tables co-locate.

Strategy: every reference to a sharded table in the statement (at any depth: joins,
subqueries, CTEs, the target of a write) is one "rte". Equalities between key columns join
rtes into components (union-find); a component is confined when one of its rtes is pinned by
`key = constant`, `key IN (…)` or an OR whose every branch pins it. The statement's keys are
the union of every component's pin, and exist only when *every* component is pinned.

Soundness rules (a wrong key misroutes silently, a missing key only fans out):
- pins come only from filters on a level's output rows: WHERE conjuncts and the ON of inner
  joins outside any outer join's nullable side. A pin in an outer join's ON does not stop
  the preserved side's rows, so it is ignored.
- a subquery's key equality with an outer rte (`b.k = a.k` in EXISTS) is directed: the outer
  pin confines the subquery, never the reverse (NOT EXISTS).
- a row-local FROM subquery or CTE (no aggregate, DISTINCT, LIMIT, window, grouping) exports
  its key columns, so `s.k = 5` pins the table inside; not when it sits on a nullable side.
- an unqualified column name is resolved only against the innermost FROM list, since an
  unsharded table there may hide a column of the same name.

Unsharded tables are assumed to exist on every shard (reference tables), so joining them
never breaks co-location.
"""

from __future__ import annotations

from pglast import ast
from pglast.enums import A_Expr_Kind, BoolExprType, JoinType, SetOperation

from pgshard.sql.confine_scope import (
    Item,
    Scope,
    Sub,
    all_ctes,
    and_terms,
    from_values,
    has_star,
    pin_size,
    ref_name,
    rename_exports,
    table_name,
    union_refs,
)
from pgshard.sql.keys import KeyRef, key_value, normalize_table
from pgshard.sql.nodes import has_aggregate, has_window, walk_expr


class Confinement:
    """Walks one parsed statement; then keys() and refusal() read the result."""

    def __init__(self, tables: dict[str, str], positions: dict[str, int] | None = None):
        self.tables = tables
        self.positions = positions or {}
        self.rte_tables: list[str] = []
        self._uf: list[int] = []
        self._directed: list[tuple[int, int]] = []   # outer pin confines inner
        self._links: list[tuple[int, int]] = []      # co-located without sharing pins
        self._pins: list[tuple[tuple[int, tuple[KeyRef, ...]], ...]] = []
        self._subquery_refusal: str | None = None
        self.windows = False
        self.locking = False
        self.writes: list[str] = []
        self.updates_key = False
        self.insert_rows: tuple[tuple[KeyRef, int], ...] | None = None

    # -- results -----------------------------------------------------------------------

    def keys(self) -> tuple[KeyRef, ...] | None:
        """The keys every sharded row the statement touches lies in, or None."""
        if not self.rte_tables:
            return None
        comps = {self._find(r) for r in range(len(self.rte_tables))}
        pinned: dict[int, tuple[KeyRef, ...]] = {}
        for alts in self._pins:
            roots = {self._find(r) for r, _ in alts}
            if len(roots) != 1:
                continue
            (root,) = roots
            keys = union_refs(k for _, ks in alts for k in ks)
            if root not in pinned or len(keys) < len(pinned[root]):
                pinned[root] = keys
        changed = True
        while changed:
            changed = False
            for outer, inner in self._directed:
                o, i = self._find(outer), self._find(inner)
                if o in pinned and i not in pinned:
                    pinned[i] = pinned[o]
                    changed = True
        if not comps <= pinned.keys():
            return None
        return union_refs(k for c in sorted(comps) for k in pinned[c])

    def refusal(self) -> str | None:
        """Why running this statement on several shards and merging would be wrong."""
        if self.locking:
            return "SELECT ... FOR UPDATE/SHARE cannot lock rows on several shards"
        if self.windows:
            return "window functions cannot be computed across shards"
        if self._subquery_refusal:
            return self._subquery_refusal
        groups = {self._find(r): {self._find(r)} for r in range(len(self.rte_tables))}
        for outer, inner in self._directed + self._links:
            a, b = groups[self._find(outer)], groups[self._find(inner)]
            if a is not b:
                a |= b
                for c in b:
                    groups[c] = a
        distinct = {id(g): g for g in groups.values()}
        if len(distinct) > 1:
            names = union_refs(self.rte_tables)
            return ("sharded tables " + ", ".join(names) + " are joined or nested other "
                    "than on equal shard keys, so no single shard holds matching rows")
        return None

    # -- statements --------------------------------------------------------------------

    def statement(self, node, scope: Scope | None = None) -> Sub:
        """Walk a SELECT/INSERT/UPDATE/DELETE (also nested); other nodes are scanned for
        sharded tables only."""
        if isinstance(node, ast.SelectStmt):
            return self.select(node, scope)
        if isinstance(node, ast.InsertStmt):
            return self._insert(node, scope)
        if isinstance(node, ast.UpdateStmt):
            return self._update(node, scope)
        if isinstance(node, ast.DeleteStmt):
            return self._delete(node, scope)
        self._scan(node, scope)
        return Sub(False, {})

    def select(self, stmt: ast.SelectStmt, parent: Scope | None) -> Sub:
        scope = Scope(parent)
        self._with(stmt.withClause, scope)
        before = len(self.rte_tables)
        if stmt.op != SetOperation.SETOP_NONE:
            left = self.select(stmt.larg, scope)
            right = self.select(stmt.rarg, scope)
            if left.rtes and right.rtes:
                # Arms produce rows independently: they need not share a shard key.
                self._links.append((min(left.rtes), min(right.rtes)))
            self._walk((stmt.sortClause, stmt.limitCount, stmt.limitOffset), scope)
            local = (stmt.op == SetOperation.SETOP_UNION and stmt.all and left.row_local
                     and right.row_local and stmt.limitCount is None
                     and stmt.limitOffset is None)
            return Sub(local, {}, self._since(before))
        if stmt.valuesLists:
            self._walk(stmt.valuesLists, scope)
            return Sub(True, {}, self._since(before))
        for item in stmt.fromClause or ():
            self._from(item, scope, strong=True, nullable=False)
        self._conjuncts(stmt.whereClause, scope, strong=True)
        self._walk((stmt.whereClause, stmt.targetList, stmt.groupClause, stmt.havingClause,
                    stmt.sortClause, stmt.windowClause, stmt.limitCount, stmt.limitOffset,
                    stmt.distinctClause), scope)
        if stmt.lockingClause and scope.rtes:
            self.locking = True
        local = not (stmt.groupClause or stmt.havingClause or stmt.distinctClause
                     or stmt.limitCount is not None or stmt.limitOffset is not None
                     or stmt.windowClause or has_aggregate((stmt.targetList, stmt.sortClause))
                     or has_window(stmt.targetList))
        exports = self._exports(stmt.targetList, scope) if local else {}
        return Sub(local, exports, self._since(before))

    def _insert(self, stmt: ast.InsertStmt, parent: Scope | None) -> Sub:
        self.writes.append("insert")
        scope = Scope(parent)
        self._with(stmt.withClause, scope)
        table = table_name(stmt.relation)
        key = self.tables.get(table)
        rte = self._new_rte(table, scope) if key else None
        cols = [c.name for c in stmt.cols or ()]
        if cols:
            pos = cols.index(key) if key and key in cols else None
        else:   # INSERT INTO t VALUES (…): the key's place in the table's column order
            p = self.positions.get(table)
            pos = p if key and p is not None and p >= 0 else None
        sel = stmt.selectStmt
        if isinstance(sel, ast.SelectStmt) and sel.valuesLists and not sel.withClause \
                and sel.op == SetOperation.SETOP_NONE:
            self._walk(sel.valuesLists, scope)
            rows = [row for row in sel.valuesLists]
            if rte is not None and pos is not None:
                refs = [key_value(row[pos]) if pos < len(row) else None for row in rows]
                if all(r is not None for r in refs):
                    self._pins.append(((rte, union_refs(refs)),))
                    if len(refs) > 1 and parent is None:   # the statement's own rows
                        self.insert_rows = tuple((r, i) for i, r in enumerate(refs))
        elif sel is not None:
            sub = self.select(sel, scope)
            if rte is not None and pos is not None and isinstance(sel, ast.SelectStmt) \
                    and sel.op == SetOperation.SETOP_NONE and sel.targetList \
                    and pos < len(sel.targetList) and not has_star(sel.targetList):
                val = sel.targetList[pos].val
                ref = key_value(val)
                rows = from_values(sel, val)
                if ref is not None and not sel.fromClause:
                    self._pins.append(((rte, (ref,)),))
                elif rows is not None and all(key_value(v) is not None for v in rows):
                    # INSERT … SELECT … FROM (VALUES …) AS v(…) (SQLAlchemy's
                    # insertmanyvalues): the keys are the VALUES rows' own.
                    self._pins.append(((rte, union_refs([key_value(v) for v in rows])),))
                elif sub.row_local and isinstance(val, ast.ColumnRef):
                    src = sub.exports.get(ref_name(val, sel.targetList[pos].name))
                    if src is not None:
                        self._union(rte, src)
        occ = stmt.onConflictClause
        if occ is not None:
            items = [Item(stmt.relation.alias.aliasname if stmt.relation.alias else
                           stmt.relation.relname, table, {key: rte} if key else {}),
                     Item("excluded", None, {})]
            scope.items.extend(items)
            if key and any(t.name == key for t in occ.targetList or ()):
                self.updates_key = True
            self._walk((occ.targetList, occ.whereClause, occ.infer), scope)
        self._walk(stmt.returningClause, scope)
        return Sub(False, {}, frozenset({rte}) if rte is not None else frozenset())

    def _update(self, stmt: ast.UpdateStmt, parent: Scope | None) -> Sub:
        self.writes.append("update")
        scope = Scope(parent)
        self._with(stmt.withClause, scope)
        before = len(self.rte_tables)
        item = self._relation(stmt.relation, scope, target=True)
        key = self.tables.get(item.table) if item.table else None
        if key and any(t.name == key for t in stmt.targetList or ()):
            self.updates_key = True
        for f in stmt.fromClause or ():
            self._from(f, scope, strong=True, nullable=False)
        self._conjuncts(stmt.whereClause, scope, strong=True)
        self._walk((stmt.targetList, stmt.whereClause, stmt.returningClause), scope)
        return Sub(False, {}, self._since(before))

    def _delete(self, stmt: ast.DeleteStmt, parent: Scope | None) -> Sub:
        self.writes.append("delete")
        scope = Scope(parent)
        self._with(stmt.withClause, scope)
        before = len(self.rte_tables)
        self._relation(stmt.relation, scope, target=True)
        for f in stmt.usingClause or ():
            self._from(f, scope, strong=True, nullable=False)
        self._conjuncts(stmt.whereClause, scope, strong=True)
        self._walk((stmt.whereClause, stmt.returningClause), scope)
        return Sub(False, {}, self._since(before))

    def _with(self, with_clause, scope: Scope) -> None:
        if with_clause is None:
            return
        for cte in with_clause.ctes:
            if with_clause.recursive:
                scope.ctes[cte.ctename] = None
            sub = self.statement(cte.ctequery, scope)
            if with_clause.recursive:
                sub = Sub(False, {}, sub.rtes)
            elif cte.aliascolnames:
                sub = Sub(sub.row_local, rename_exports(sub.exports, cte.ctequery,
                                                  [c.sval for c in cte.aliascolnames]), sub.rtes)
            scope.ctes[cte.ctename] = sub

    def _scan(self, node, scope) -> None:
        """Record the sharded tables a utility statement names (COPY, EXPLAIN, LOCK, DDL)."""
        def visit(n):
            if isinstance(n, ast.RangeVar):
                table = table_name(n)
                if table in self.tables and table not in self.rte_tables:
                    self.rte_tables.append(table)
                    self._uf.append(len(self._uf))
            elif isinstance(n, ast.SelectStmt | ast.InsertStmt | ast.UpdateStmt
                            | ast.DeleteStmt):
                self.statement(n, scope)
                return True
            return False

        def walk(n):
            if isinstance(n, tuple | list):
                for x in n:
                    walk(x)
            elif isinstance(n, ast.Node) and not visit(n):
                for name in n.__slots__:
                    walk(getattr(n, name))
        walk(node)

    # -- FROM --------------------------------------------------------------------------

    def _new_rte(self, table: str, scope: Scope) -> int:
        rte = len(self.rte_tables)
        self.rte_tables.append(table)
        self._uf.append(rte)
        scope.rtes.add(rte)
        return rte

    def _relation(self, rv: ast.RangeVar, scope: Scope, target: bool = False) -> Item:
        alias = rv.alias.aliasname if rv.alias else rv.relname
        if not rv.schemaname and not target:
            is_cte, sub = scope.cte(rv.relname)
            if is_cte:
                item = Item(alias, None, {})
                if sub is not None and sub.rtes and not sub.row_local:
                    self._refuse_subquery(f"CTE {rv.relname} over a sharded table aggregates, "
                                          "limits or deduplicates rows, which needs all shards")
                if sub is not None and sub.row_local:
                    item.keys = rename_exports(sub.exports, None, rv.alias.colnames) \
                        if rv.alias and rv.alias.colnames else dict(sub.exports)
                scope.items.append(item)
                return item
        table = table_name(rv)
        key = self.tables.get(table)
        item = Item(alias, table, {key: self._new_rte(table, scope)} if key else {})
        scope.items.append(item)
        return item

    def _from(self, node, scope: Scope, strong: bool, nullable: bool) -> list[Item]:
        """Add a FROM entry's items to scope; strong: its ON pins filter the level's rows."""
        if isinstance(node, ast.RangeVar):
            item = self._relation(node, scope)
            if nullable:
                is_cte, _ = scope.cte(node.relname) if not node.schemaname else (False, None)
                if is_cte:
                    item.keys = {}
            return [item]
        if isinstance(node, ast.RangeTableSample):
            return self._from(node.relation, scope, strong, nullable)
        if isinstance(node, ast.JoinExpr):
            jt = node.jointype
            inner = jt == JoinType.JOIN_INNER
            left = self._from(node.larg, scope, strong and jt in (JoinType.JOIN_INNER,
                              JoinType.JOIN_LEFT), nullable or jt in (JoinType.JOIN_RIGHT,
                              JoinType.JOIN_FULL))
            right = self._from(node.rarg, scope, strong and jt in (JoinType.JOIN_INNER,
                               JoinType.JOIN_RIGHT), nullable or jt in (JoinType.JOIN_LEFT,
                               JoinType.JOIN_FULL))
            names = [s.sval for s in node.usingClause or ()]
            if node.isNatural:
                names = [k for i in left for k in i.keys if any(k in j.keys for j in right)]
            for col in names:
                ls = [i.keys[col] for i in left if col in i.keys]
                rs = [i.keys[col] for i in right if col in i.keys]
                if ls and rs:
                    self._union(ls[0], rs[0])
            self._conjuncts(node.quals, scope, strong=strong and inner)
            self._walk(node.quals, scope)
            return left + right
        if isinstance(node, ast.RangeSubselect):
            lateral_scope = scope if node.lateral else scope.parent
            sub = self.statement(node.subquery, Scope(lateral_scope, ctes=all_ctes(scope)))
            alias = node.alias.aliasname if node.alias else ""
            # A LATERAL subquery correlated on a shard key runs per outer row, on its shard.
            correlated = any(i in sub.rtes and o not in sub.rtes for o, i in self._directed)
            if sub.rtes and not sub.row_local and not correlated:
                self._refuse_subquery("a subquery in FROM over a sharded table aggregates, "
                                      "limits or deduplicates rows, which needs all shards")
            keys = {} if nullable or not sub.row_local else (
                rename_exports(sub.exports, node.subquery, [c.sval for c in node.alias.colnames])
                if node.alias and node.alias.colnames else dict(sub.exports))
            item = Item(alias, None, keys)
            scope.items.append(item)
            return [item]
        # Functions, JSON_TABLE, XMLTABLE: scanned for subqueries, no sharded rows of their own.
        self._walk(node, scope)
        alias = getattr(node, "alias", None)
        item = Item(alias.aliasname if alias else "", None, {})
        scope.items.append(item)
        return [item]

    def _refuse_subquery(self, reason: str) -> None:
        if self._subquery_refusal is None:
            self._subquery_refusal = reason

    # -- predicates --------------------------------------------------------------------

    def _conjuncts(self, expr, scope: Scope, strong: bool) -> None:
        for c in and_terms(expr):
            if strong:
                pin = self._pin(c, scope)
                if pin:
                    self._pins.append(pin)
                    continue
            self._edge(c, scope)

    def _pin(self, expr, scope: Scope):
        """The pin alternatives ((rte, keys), …) a predicate imposes, or None."""
        if isinstance(expr, ast.BoolExpr):
            if expr.boolop == BoolExprType.OR_EXPR:
                alts = []
                for branch in expr.args:
                    best = None
                    for c in and_terms(branch):
                        p = self._pin(c, scope)
                        if p and (best is None or pin_size(p) < pin_size(best)):
                            best = p
                    if best is None:
                        return None
                    alts.extend(best)
                return tuple(alts)
            if expr.boolop == BoolExprType.AND_EXPR:
                pins = [p for c in expr.args if (p := self._pin(c, scope))]
                return min(pins, key=pin_size) if pins else None
            return None
        if not isinstance(expr, ast.A_Expr) or not expr.name or len(expr.name) != 1 \
                or expr.name[0].sval != "=":
            return None
        kind = expr.kind
        if kind in (A_Expr_Kind.AEXPR_OP, A_Expr_Kind.AEXPR_NOT_DISTINCT):
            for col, val in ((expr.lexpr, expr.rexpr), (expr.rexpr, expr.lexpr)):
                rte = self._key_rte(col, scope, local=True)
                ref = key_value(val) if rte is not None else None
                if ref is not None:
                    return ((rte, (ref,)),)
        elif kind == A_Expr_Kind.AEXPR_IN or kind == A_Expr_Kind.AEXPR_OP_ANY:
            rte = self._key_rte(expr.lexpr, scope, local=True)
            vals = expr.rexpr
            if kind == A_Expr_Kind.AEXPR_OP_ANY:
                vals = vals.elements if isinstance(vals, ast.A_ArrayExpr) else None
            if rte is not None and vals:
                refs = [key_value(v) for v in vals]
                if all(r is not None for r in refs):
                    return ((rte, union_refs(refs)),)
        return None

    def _edge(self, expr, scope: Scope) -> None:
        if not (isinstance(expr, ast.A_Expr) and expr.kind in (
                A_Expr_Kind.AEXPR_OP, A_Expr_Kind.AEXPR_NOT_DISTINCT)
                and expr.name and len(expr.name) == 1 and expr.name[0].sval == "="):
            return
        a = self._key_rte(expr.lexpr, scope, local=False)
        b = self._key_rte(expr.rexpr, scope, local=False)
        if a is None or b is None:
            return
        a_here, b_here = a in scope.rtes or self._exported(a, scope), \
            b in scope.rtes or self._exported(b, scope)
        if a_here and b_here:
            self._union(a, b)
        elif a_here:
            self._directed.append((b, a))
        elif b_here:
            self._directed.append((a, b))

    def _exported(self, rte: int, scope: Scope) -> bool:
        return any(rte in i.keys.values() for i in scope.items)

    def _key_rte(self, node, scope: Scope, local: bool) -> int | None:
        """The rte whose key column node names; local: only this level's FROM."""
        if not isinstance(node, ast.ColumnRef):
            return None
        fields = node.fields
        if not all(isinstance(f, ast.String) for f in fields):
            return None
        names = [f.sval for f in fields]
        col = names[-1]
        if len(names) == 1:
            hits = [i.keys[col] for i in scope.items if col in i.keys]
            roots = {self._find(h) for h in hits}
            return hits[0] if len(roots) == 1 else None
        qual = names[:-1]
        s = scope
        while s is not None:
            for item in s.items:
                if (len(qual) == 1 and item.alias == qual[0]) or (
                        len(qual) == 2 and item.table is not None and item.alias == qual[1]
                        and item.table == normalize_table(".".join(qual))):
                    return item.keys.get(col)
            if local:
                return None
            s = s.parent
        return None

    # -- expressions -------------------------------------------------------------------

    def _walk(self, node, scope: Scope) -> None:
        """Find subqueries and window calls inside expressions."""
        def visit(n):
            if isinstance(n, ast.SubLink):
                self.statement(n.subselect, scope)
                self._walk(n.testexpr, scope)
                return True
            if isinstance(n, ast.SelectStmt):
                self.statement(n, scope)
                return True
            if isinstance(n, ast.FuncCall) and n.over is not None:
                self.windows = True
            return False
        walk_expr(node, visit)

    def _exports(self, targets, scope: Scope) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in targets or ():
            v = t.val
            if not isinstance(v, ast.ColumnRef):
                continue
            if isinstance(v.fields[-1], ast.A_Star):
                if len(v.fields) == 1:
                    for item in scope.items:
                        out.update(item.keys)
                else:
                    qual = v.fields[-2].sval
                    for item in scope.items:
                        if item.alias == qual:
                            out.update(item.keys)
                continue
            rte = self._key_rte(v, scope, local=True)
            if rte is not None:
                out[t.name or v.fields[-1].sval] = rte
        return out

    # -- union-find --------------------------------------------------------------------

    def _find(self, r: int) -> int:
        uf = self._uf
        while uf[r] != r:
            uf[r] = uf[uf[r]]
            r = uf[r]
        return r

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._uf[max(ra, rb)] = min(ra, rb)

    def _since(self, before: int) -> frozenset[int]:
        return frozenset(range(before, len(self.rte_tables)))
