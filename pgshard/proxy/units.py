"""Shared vocabulary of a client session: pending extended-protocol operations, the
routing decisions besides a shard name (a fan-out unit, a wait), and the statement kinds the
session treats specially."""

from __future__ import annotations

import re

from pgshard.sql import classify as r

# The kinds of the pending extended-protocol operations below (op.kind): a unit's ops are
# built until Flush/Sync, then sent to one server, split over several or answered here.
OP_PARSE, OP_BIND, OP_DESC_STMT, OP_RAW, OP_FAKE, OP_FLUSH, OP_SYNC = range(7)


class ParseOp:
    """A Parse to send: the cached statement, the message as the client sent it, and the
    client's name for it ("" for the unnamed statement)."""

    __slots__ = ("st", "raw", "name")
    kind = OP_PARSE

    def __init__(self, st, raw: bytes, name: str):
        self.st = st
        self.raw = raw
        self.name = name


class BindOp:
    """A Bind to send: the statement, the message (renamed to the statement's server-side
    name where it has one), the decoded Bind where routing or a fan-out needs it, and, once
    the unit's Binds are routed one by one, its own shard (None: BEGIN/COMMIT/ROLLBACK,
    answered here)."""

    __slots__ = ("st", "raw", "bind", "shard")
    kind = OP_BIND

    def __init__(self, st, raw: bytes, bind=None, shard: str | None = None):
        self.st = st
        self.raw = raw
        self.bind = bind
        self.shard = shard


class DescribeStatementOp:
    """A Describe of a prepared statement (sent under its server-side name)."""

    __slots__ = ("st",)
    kind = OP_DESC_STMT

    def __init__(self, st):
        self.st = st


class RawOp:
    """A message sent as the client wrote it (Execute, a portal's Describe, Close) and the
    reply it expects (X_EXEC, X_DESC_PORTAL, X_CLOSE)."""

    __slots__ = ("raw", "expect")
    kind = OP_RAW

    def __init__(self, raw: bytes, expect: int):
        self.raw = raw
        self.expect = expect


class FakeOp:
    """A reply made here, sent to the client in its place among the servers' replies."""

    __slots__ = ("reply",)
    kind = OP_FAKE

    def __init__(self, reply: bytes):
        self.reply = reply


class FlushOp:
    """The client's Flush (one instance: FLUSH_OP)."""

    __slots__ = ()
    kind = OP_FLUSH


class SyncOp:
    """The client's Sync (one instance: SYNC_OP)."""

    __slots__ = ()
    kind = OP_SYNC


FLUSH_OP = FlushOp()
SYNC_OP = SyncOp()

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
