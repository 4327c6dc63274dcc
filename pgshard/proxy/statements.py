"""Prepared statements shared across clients under global names, so they survive pooling."""

from __future__ import annotations

import hashlib

from pgshard.cache import ByteLRU
from pgshard.protocol import messages as m
from pgshard.sql import classify

DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
# What a Statement costs beyond its texts: the object, its plan, the cache's bookkeeping.
_OVERHEAD = 512


class Statement:
    """One (SQL text, parameter types) pair; the same object serves every client."""

    __slots__ = ("sql", "oids", "global_name", "parse_msg", "plan", "described_oids", "validated",
                 "analysis")

    def __init__(self, sql: str, oids: tuple[int, ...], named: bool, epoch: int = 0):
        self.sql = sql
        self.oids = oids
        self.plan = classify.plan(sql)
        if named:
            digest = hashlib.blake2b(f"{sql}\0{oids}\0{epoch}".encode(),
                                     digest_size=10).hexdigest()
            self.global_name = f"pgshard_{digest}"
        else:
            self.global_name = ""
        self.parse_msg = m.parse(self.global_name, sql, oids)
        self.described_oids: tuple[int, ...] | None = None
        self.validated = False   # a server has accepted its Parse
        # The routing analysis of sql, kept with the catalog tables and key positions it
        # was made for (the session's targeting checks them by identity): (tables,
        # positions, Analysis) or None.
        self.analysis = None

    @property
    def weight(self) -> int:
        """Bytes this statement holds: its text (as str) and its Parse message."""
        return len(self.sql) + len(self.parse_msg) + 4 * len(self.oids) + _OVERHEAD

    def param_oids(self, n: int) -> tuple[int, ...]:
        """param_oid of parameters 0 … n-1."""
        return tuple([self.param_oid(i) for i in range(n)])

    def param_oid(self, i: int) -> int:
        """The type OID of 0-based parameter i, from Parse or from ParameterDescription."""
        if i < len(self.oids) and self.oids[i]:
            return self.oids[i]
        d = self.described_oids
        if d is not None and i < len(d):
            return d[i]
        return 0


class StatementCache:
    """Statement objects by (named?, text, types), bounded by the bytes they hold, least
    recently used dropped first.

    Eviction only drops the cache's reference: a client keeps the Statement it holds in
    its own `stmts`, and its global name is derived from the text, so a statement made
    again later is the same statement on every server that prepared it."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.epoch = 0
        self._lru = ByteLRU(max_bytes)

    @property
    def bytes(self) -> int:
        """The weight of the statements cached now."""
        return self._lru.bytes

    @property
    def max_bytes(self) -> int:
        return self._lru.max_bytes

    def __len__(self) -> int:
        return len(self._lru)

    def invalidate(self) -> None:
        """After DDL: later Parses get fresh global names, so no server reuses a plan made
        for the old schema."""
        self.epoch += 1
        self._lru.clear()

    def get(self, sql: str, oids: tuple[int, ...], named: bool) -> Statement:
        key = (named, sql, oids)
        st = self._lru.get(key)
        if st is None:
            st = Statement(sql, oids, named, self.epoch)
            self._lru.put(key, st, st.weight)   # one heavier than the budget is not kept
        return st
