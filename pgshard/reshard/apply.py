"""Captured changes applied to the destination, idempotently by primary key: the rows of the
moving ranges are upserted (INSERT … ON CONFLICT DO UPDATE) or deleted by key; changes to
other rows are skipped.

Strategy: changes arrive in commit order and each one states a row's whole new value (or
its deletion), so replaying a change already applied, or one older than the copied row,
converges: the last change of each key wins. An UPDATE that left TOASTed values unchanged
(pgoutput sends them as "unchanged") updates only the columns it has: the row is already on
the destination, put there by the copy or by an earlier change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import asyncpg

from pgshard.protocol import pgoutput as po
from pgshard.reshard import sqltext as q
from pgshard.reshard.tables import TableInfo
from pgshard.ring.hashing import token
from pgshard.ring.ring import TokenSpan


class Applier:
    """Turns one source's pgoutput events into statements on the destination."""

    def __init__(self, tables: Iterable[TableInfo], spans: Sequence[TokenSpan]):
        self.by_name = {q.split_name(t.name): t for t in tables}
        self.spans = tuple(spans)
        self.relations: dict[int, tuple[TableInfo, tuple[int | None, ...]]] = {}
        # Per table, the primary keys (text forms) of the moving rows the events changed;
        # None once a TRUNCATE touched the whole table.
        self.touched: dict[str, set[tuple] | None] = {}

    def moving(self, key_text) -> bool:
        if not isinstance(key_text, str):
            return False   # NULL keys belong to no range
        t = token(key_text.encode())
        return any(s.lo < t <= s.hi for s in self.spans)

    def statements(self, events: Iterable[po.Event]) -> list[tuple[str, tuple]]:
        """The statements (SQL, parameters) that apply the events' moving rows, in order."""
        out: list[tuple[str, tuple]] = []
        for ev in events:
            if isinstance(ev, po.Relation):
                self._relation(ev)
            elif isinstance(ev, po.Insert):
                self._write(out, ev.relation_oid, None, ev.new)
            elif isinstance(ev, po.Update):
                self._write(out, ev.relation_oid, ev.old, ev.new)
            elif isinstance(ev, po.Delete):
                self._write(out, ev.relation_oid, ev.old, None)
            elif isinstance(ev, po.Truncate):
                for oid in ev.relation_oids:
                    if oid in self.relations:
                        info = self.relations[oid][0]
                        out.append((q.delete_ranges(info.name, info.key, self.spans), ()))
                        self.touched[info.name] = None
        return out

    def _relation(self, rel: po.Relation) -> None:
        info = self.by_name.get((rel.namespace, rel.name))
        if info is None:
            return
        names = [c.name for c in rel.columns]
        # Position of each of info's columns in the relation's tuples.
        self.relations[rel.oid] = (info, tuple(names.index(c) if c in names else None
                                               for c in info.columns))

    def _write(self, out: list, oid: int, old, new) -> None:
        got = self.relations.get(oid)
        if got is None:
            return
        info, pos = got

        def value(tup, column):
            p = pos[info.columns.index(column)]
            return tup[p] if p is not None and p < len(tup) else None

        def pk_of(tup):
            return tuple(value(tup, c) for c in info.pk)

        new_pk = pk_of(new) if new is not None else None
        if old is not None:
            old_pk = pk_of(old)
            if (new_pk is None or old_pk != new_pk) and self.moving(value(old, info.key)):
                out.append((q.delete_key(info.name, info.pk, info.pk_types), _text(old_pk)))
                self._touch(info.name, old_pk)
        if new is None or not self.moving(value(new, info.key)):
            return
        self._touch(info.name, new_pk)
        row = [value(new, c) for c in info.columns]
        if any(v is po.UNCHANGED_TOAST for v in row):
            cols = [c for c, v in zip(info.columns, row, strict=True)
                    if v is not po.UNCHANGED_TOAST]
            vals = [v for v in row if v is not po.UNCHANGED_TOAST]
            out.append((q.update_columns(info.name, cols, [info.type_of(c) for c in cols],
                                         info.pk, info.pk_types), _text(new_pk) + _text(vals)))
        else:
            out.append((q.upsert(info.name, info.columns, info.types, info.pk), _text(row)))


    def _touch(self, table: str, pk: tuple) -> None:
        keys = self.touched.setdefault(table, set())
        if keys is not None:
            keys.add(pk)


def _text(values) -> tuple:
    out = []
    for v in values:
        if isinstance(v, po.Binary):
            raise ValueError("binary pgoutput columns cannot be applied as text")
        out.append(v)
    return tuple(out)


async def run(conn: asyncpg.Connection, statements: Sequence[tuple[str, tuple]]) -> int:
    """Run the statements in one transaction on the destination (consecutive runs of one
    statement as one executemany). Returns how many were run."""
    if not statements:
        return 0
    async with conn.transaction():
        i = 0
        while i < len(statements):
            sql = statements[i][0]
            j = i
            while j < len(statements) and statements[j][0] == sql:
                j += 1
            args = [s[1] for s in statements[i:j]]
            if args[0]:
                await conn.executemany(sql, args)
            else:
                for _ in args:
                    await conn.execute(sql)
            i = j
    return len(statements)
