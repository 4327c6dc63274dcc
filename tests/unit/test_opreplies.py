"""Cutting one server's replies per request (protocol.opreplies) and placing a pipeline's
requests on shards (proxy.pipelines.assign / txn_ends), as tables."""

from __future__ import annotations

import pytest

from pgshard.protocol import opreplies as orp
from pgshard.proxy import pipelines as pl
from pgshard.proxy.backend import X_DESC_PORTAL, X_EXEC
from pgshard.proxy.units import BindOp, DescribeStatementOp, FakeOp, ParseOp, RawOp
from pgshard.sql import classify as r

P, B, E, DP, DS, CL, S = orp.PARSE, orp.BIND, orp.EXEC, orp.DESC_PORTAL, orp.DESC_STMT, \
    orp.CLOSE, orp.SYNC


def frames(types: str) -> list[tuple[int, bytes]]:
    return [(ord(c), c.encode()) for c in types]


CUTS = [
    ("one insert", [P, B, DP, E, S], "12nCZ", ["1", "2", "n", "C", "Z"]),
    ("rows", [B, E, B, E, S], "2DDC2DCZ", ["2", "DDC", "2", "DC", "Z"]),
    ("describe statement", [P, DS, S], "1tTZ", ["1", "tT", "Z"]),
    ("notice with its request", [B, E, S], "2NDCZ", ["2", "NDC", "Z"]),
    ("error skips to sync", [B, E, B, E, S], "2EZ", ["2", "E", "", "", "Z"]),
    ("error at bind", [P, B, E, S], "1EZ", ["1", "E", "", "Z"]),
    ("suspended portal", [B, E, S], "2DsZ", ["2", "Ds", "Z"]),
    ("empty query", [B, E, CL, S], "2I3Z", ["2", "I", "3", "Z"]),
    ("error at sync (commit)", [B, E, S], "2CEZ", ["2", "C", "EZ"]),
]


@pytest.mark.parametrize("kinds,got,want", [c[1:] for c in CUTS], ids=[c[0] for c in CUTS])
def test_cut(kinds, got, want):
    groups = orp.cut(kinds, frames(got))
    assert ["".join(chr(t) for t, _ in g) for g in groups] == want


def test_cut_refuses_extra_frames():
    with pytest.raises(orp.ReplyCutError):
        orp.cut([B, S], frames("2ZC"))


class _St:
    def __init__(self, kind=r.STATEMENT):
        self.plan = r.Plan(kind)


ST, BEGIN, COMMIT = _St(), _St(r.BEGIN), _St(r.COMMIT)
EXEC = RawOp(b"", X_EXEC)
DESC = RawOp(b"", X_DESC_PORTAL)


def bind(shard, st=ST):
    return BindOp(st, b"", None, shard)


ASSIGN = [
    ("binds and their executes", [bind("a"), EXEC, bind("b"), DESC, EXEC],
     ["a", "a", "b", "b", "b"]),
    ("parse goes with the next bind", [ParseOp(ST, b"", ""), bind("b"), EXEC, ParseOp(ST, b"", ""),
                                       DescribeStatementOp(ST), bind("a"), EXEC],
     ["b", "b", "b", "a", "a", "a", "a"]),
    ("trailing parse stays", [bind("a"), EXEC, ParseOp(ST, b"", "")], ["a", "a", "a"]),
    ("no bind at all", [ParseOp(ST, b"", "")], ["z"]),
    ("begin and commit answered here", [ParseOp(BEGIN, b"", ""), bind(None, BEGIN), EXEC, bind("a"),
                                        EXEC, bind(None, COMMIT), EXEC],
     [pl.LOCAL, pl.LOCAL, pl.LOCAL, "a", "a", pl.LOCAL, pl.LOCAL]),
    ("fake reply", [bind("a"), FakeOp(b"x"), EXEC], ["a", pl.LOCAL, "a"]),
]


@pytest.mark.parametrize("ops,want", [c[1:] for c in ASSIGN], ids=[c[0] for c in ASSIGN])
def test_assign(ops, want):
    assert pl.assign(ops, "z") == want


def test_txn_ends():
    ops = [bind(None, BEGIN), EXEC, bind("a"), EXEC, bind(None, COMMIT), EXEC]
    assert pl.txn_ends(ops, pl.assign(ops, "z")) == (True, r.COMMIT)
    ops = [bind("a"), EXEC, bind(None, BEGIN), EXEC, bind("b"), EXEC]
    with pytest.raises(ValueError):
        pl.txn_ends(ops, pl.assign(ops, "z"))
