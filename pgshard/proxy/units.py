"""Shared vocabulary of a client session: pending extended-protocol operations, the
routing decisions besides a shard name (a fan-out unit, a wait), and the statement kinds the
session treats specially."""

from __future__ import annotations

import re

from pgshard.sql import classify as r

# Pending extended-protocol operations (built until Flush/Sync, then sent to one server).
OP_PARSE, OP_BIND, OP_DESC_STMT, OP_RAW, OP_FAKE, OP_FLUSH, OP_SYNC = range(7)

# Statements answered by the proxy itself, also inside a multi-shard transaction.
LOCAL_KINDS = frozenset({"set_pgshard", "reset_pgshard", "show_pgshard", "deallocate", "empty"})
READ_ONLY = re.compile(r"\bREAD\s+ONLY\b", re.I)
TXN_KINDS = (r.BEGIN, r.COMMIT, r.ROLLBACK)


def quote_literal(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


class Fanout:
    """A unit that runs on several shards: a read to merge, DDL to apply everywhere, an
    INSERT split per shard, or (in a multi-shard transaction) one or all held servers."""

    __slots__ = ("kind", "shards", "analysis", "groups")

    def __init__(self, kind: str, shards: list[str], analysis, groups=None):
        self.kind = kind
        self.shards = shards
        self.analysis = analysis
        self.groups = groups       # insert: shard -> row indexes of a multi-row VALUES


class Wait:
    """A routing decision: the statement cannot be routed yet. The session awaits
    run(session), then routes the statement afresh."""

    __slots__ = ()

    def run(self, session):
        raise NotImplementedError


class NeedColumns(Wait):
    """Routing needs the column order of these tables (an INSERT without a column list):
    the session learns it from a shard."""

    __slots__ = ("tables",)

    def __init__(self, tables):
        self.tables = tables

    def run(self, session):
        return session.fan.learn_columns(self.tables)
