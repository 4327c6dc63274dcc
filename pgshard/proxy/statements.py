"""Prepared statements shared across clients under global names, so they survive pooling."""

from __future__ import annotations

import hashlib

from pgshard.protocol import messages as m
from pgshard.proxy import routing


class Statement:
    """One (SQL text, parameter types) pair; the same object serves every client."""

    __slots__ = ("sql", "oids", "global_name", "parse_msg", "plan", "described_oids", "validated")

    def __init__(self, sql: str, oids: tuple[int, ...], named: bool, epoch: int = 0):
        self.sql = sql
        self.oids = oids
        self.plan = routing.plan(sql)
        if named:
            digest = hashlib.blake2b(f"{sql}\0{oids}\0{epoch}".encode(),
                                     digest_size=10).hexdigest()
            self.global_name = f"pgshard_{digest}"
        else:
            self.global_name = ""
        self.parse_msg = m.parse(self.global_name, sql, oids)
        self.described_oids: tuple[int, ...] | None = None
        self.validated = False   # a server has accepted its Parse

    def param_oid(self, i: int) -> int:
        """The type OID of 0-based parameter i, from Parse or from ParameterDescription."""
        if i < len(self.oids) and self.oids[i]:
            return self.oids[i]
        d = self.described_oids
        if d is not None and i < len(d):
            return d[i]
        return 0


class StatementCache:
    """Statement objects by (named?, text, types); bounded, oldest dropped first."""

    def __init__(self, limit: int = 20000):
        self.limit = limit
        self.epoch = 0
        self._named: dict[tuple[str, tuple[int, ...]], Statement] = {}
        self._unnamed: dict[tuple[str, tuple[int, ...]], Statement] = {}

    def invalidate(self) -> None:
        """After DDL: later Parses get fresh global names, so no server reuses a plan made
        for the old schema."""
        self.epoch += 1
        self._named.clear()
        self._unnamed.clear()

    def get(self, sql: str, oids: tuple[int, ...], named: bool) -> Statement:
        table = self._named if named else self._unnamed
        key = (sql, oids)
        st = table.get(key)
        if st is None:
            st = Statement(sql, oids, named, self.epoch)
            if len(table) >= self.limit:
                table.pop(next(iter(table)))
            table[key] = st
        return st
