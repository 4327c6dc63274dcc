"""A multi-row `INSERT … VALUES ($1, $2), ($3, $4) [ON CONFLICT …] [RETURNING …]` with bound
parameters split per shard, pure: each shard's statement holds only its rows, with its
parameters renumbered from $1, and the Bind values, format codes and Parse types to match.
(scatter.split_insert does the simple-protocol version, with literals.)

    groups = group_rows(analysis.insert_rows, params, formats, oids, owner)
    for shard, part in split_bound_insert(sql, groups, params, formats, oids).items():
        Parse(part.sql, part.oids); Bind(part.params, part.formats); Execute …

Parameters used outside the VALUES rows (ON CONFLICT … SET x = $5, RETURNING $6, a CTE)
go to every shard's statement. A shard's parameters are numbered in the order they first
appear in its statement text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pglast import ast, parse_sql
from pglast.stream import RawStream
from pglast.visitors import Visitor

from pgshard.protocol.errors import FeatureNotSupported, ProtocolViolation
from pgshard.ring.hashing import InvalidKey
from pgshard.sql.keys import KeyRef


@dataclass(frozen=True, slots=True)
class BoundInsert:
    """One shard's part of the INSERT: what its Parse and Bind carry."""

    sql: str
    params: tuple[bytes | None, ...]
    formats: tuple[int, ...]        # one format code per parameter
    oids: tuple[int, ...]           # Parse parameter types, one per parameter (0: infer)
    rows: tuple[int, ...]           # the original VALUES rows it holds (0-based)


def param_formats(formats: Sequence[int], count: int) -> list[int]:
    """Bind's format codes (none: all text, one: all alike, else one each) → one each."""
    if not formats:
        return [0] * count
    if len(formats) == 1:
        return [formats[0]] * count
    if len(formats) != count:
        raise ProtocolViolation(f"bind message has {len(formats)} parameter formats but "
                                f"{count} parameters")
    return list(formats)


def group_rows(insert_rows: Sequence[tuple[KeyRef, int]], params: Sequence[bytes | None],
               formats: Sequence[int], oids: Sequence[int], owner: Callable[[bytes], str],
               kind: str = "auto") -> dict[str, list[int]]:
    """Row indices by owning shard; insert_rows is Analysis.insert_rows (key, row), owner
    maps canonical key bytes to a shard, kind is the key column's type (KeyRef.resolve)."""
    groups: dict[str, list[int]] = {}
    for ref, row in insert_rows:
        if ref.param is not None and ref.param - 1 < len(params) \
                and params[ref.param - 1] is None:
            raise InvalidKey(f"row {row + 1}: a NULL shard key belongs to no shard")
        key = ref.resolve(params, formats, oids, kind)
        groups.setdefault(owner(key), []).append(row)
    return groups


class _Params(Visitor):
    """Every ParamRef of a tree, in text order; renumbered with `mapping` if one is set."""

    def __init__(self, mapping: dict[int, int] | None = None):
        super().__init__()
        self.mapping = mapping
        self.refs: list[ast.ParamRef] = []

    def visit_ParamRef(self, ancestors, node):
        self.refs.append(node)
        if self.mapping is not None:
            node.number = self.mapping[node.number]


def split_bound_insert(sql: str, groups: dict[str, Sequence[int]],
                       params: Sequence[bytes | None], formats: Sequence[int] = (),
                       oids: Sequence[int] = ()) -> dict[str, BoundInsert]:
    """Each shard's statement and Bind for `groups` ({shard: VALUES row indices})."""
    fmts = param_formats(formats, len(params))
    out: dict[str, BoundInsert] = {}
    for shard, rows in groups.items():
        stmt = _insert_stmt(sql)
        values = stmt.selectStmt.valuesLists
        if any(not 0 <= i < len(values) for i in rows):
            raise ValueError(f"row index out of range for {len(values)} VALUES rows")
        stmt.selectStmt.valuesLists = tuple(values[i] for i in rows)
        seen = _Params()
        seen(stmt)
        order: list[int] = []
        for ref in sorted(seen.refs, key=lambda r: r.location):
            if ref.number not in order:
                order.append(ref.number)
        missing = [n for n in order if n > len(params)]
        if missing:
            raise ProtocolViolation(f"bind message supplies {len(params)} parameters, but "
                                    f"the statement uses ${max(missing)}")
        _Params({old: new for new, old in enumerate(order, 1)})(stmt)
        out[shard] = BoundInsert(
            sql=RawStream()(stmt),
            params=tuple(params[n - 1] for n in order),
            formats=tuple(fmts[n - 1] for n in order),
            oids=tuple(oids[n - 1] if n - 1 < len(oids) else 0 for n in order),
            rows=tuple(rows))
    return out


def _insert_stmt(sql: str) -> ast.InsertStmt:
    stmts = parse_sql(sql)
    if len(stmts) != 1:
        raise FeatureNotSupported("only one INSERT statement can be split per shard")
    stmt = stmts[0].stmt
    sel = getattr(stmt, "selectStmt", None)
    if not isinstance(stmt, ast.InsertStmt) or not isinstance(sel, ast.SelectStmt) \
            or not sel.valuesLists:
        raise FeatureNotSupported("only INSERT … VALUES can be split per shard")
    return stmt
