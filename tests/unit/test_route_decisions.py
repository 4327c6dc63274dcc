"""Routing returns its decision, never raises it: a shard's name, a Fanout, or a Wait
(NeedColumns for an INSERT without a column list whose table's column order is not known
yet, FenceHeld for a key in a range resharding fences). Table test over Targeting.target
with a real catalog and a session holding only what routing reads."""

from __future__ import annotations

import pytest

from pgshard.proxy import fence
from pgshard.proxy.targeting import Targeting
from pgshard.proxy.units import Fanout, NeedColumns, Wait
from pgshard.ring import hashing
from pgshard.ring.catalog import Catalog, Fence, Shard
from pgshard.sql import classify as r

SHARDS = [Shard("s0", "postgresql://pg0:5432/app"), Shard("s1", "postgresql://pg1:5432/app")]
CATALOG = Catalog.initial(SHARDS, {"items": "id"}, vnodes_per_shard=8)


class _Proxy:
    """The proxy state routing reads: the catalog and the learned key positions."""

    replicas = None
    twophase = None
    lease_gate = None

    def __init__(self, catalog, positions):
        self.catalog = catalog
        self.positions = positions
        self.config = type("C", (), {"proxy": type("P", (), {"fence_timeout": 5.0})})()

    def key_positions_of(self, database):
        return self.positions, tuple(sorted(self.positions.items()))


class _Txn:
    multi = None
    pending = None


class _Session:
    """A session between statements: no server, no hints set, no transaction."""

    session_shard = None
    session_key = None
    local_key = None
    server = None
    database = None
    pid = 1

    def __init__(self, proxy):
        self.proxy = proxy
        self.txn = _Txn()


def _owner(cat, key: int) -> str:
    return cat.ring.owner(hashing.token(hashing.canonical_key(key)))


def _route(sql: str, positions: dict, catalog=CATALOG):
    session = _Session(_Proxy(catalog, positions))
    session.targeting = Targeting(session)
    return session.targeting.target(r.plan(sql), sql=sql)


KNOWN = {"items": 0}   # the key is the table's first column

CASES = [
    # (SQL, learned key positions, what routing decides)
    ("INSERT INTO items VALUES (7, 'x')", {}, NeedColumns),
    ("INSERT INTO items VALUES (7, 'x')", KNOWN, _owner(CATALOG, 7)),
    ("INSERT INTO items (id, v) VALUES (7, 'x')", {}, _owner(CATALOG, 7)),
    ("SELECT * FROM items WHERE id = 9", {}, _owner(CATALOG, 9)),
    ("SELECT * FROM items", {}, Fanout),
    ("/* shard: s1 */ INSERT INTO items VALUES (7, 'x')", {}, NeedColumns),
]


@pytest.mark.parametrize("sql,positions,want", CASES, ids=[f"{c[0]} {c[1]}" for c in CASES])
def test_routing_decides(sql, positions, want):
    got = _route(sql, positions)
    if isinstance(want, str):
        assert got == want
    else:
        assert type(got) is want
    if type(got) is NeedColumns:
        assert got.tables == ["items"]


def test_a_fenced_key_is_a_wait_not_an_exception():
    key = 9
    token = hashing.token(hashing.canonical_key(key))
    fenced = CATALOG.evolve(fences=(Fence(token - 1, token, "job-1"),))
    got = _route(f"SELECT * FROM items WHERE id = {key}", {}, fenced)
    assert isinstance(got, fence.FenceHeld) and isinstance(got, Wait)
    assert got.hold.job == "job-1" and token in got.hold.tokens
    # another key, outside the fence, routes as before
    other = next(k for k in range(100)
                 if fenced.is_fenced(hashing.token(hashing.canonical_key(k))) is None)
    assert _route(f"SELECT * FROM items WHERE id = {other}", {}, fenced) == _owner(CATALOG, other)


def test_decisions_are_values():
    assert not issubclass(Wait, BaseException)
    assert issubclass(NeedColumns, Wait) and issubclass(fence.FenceHeld, Wait)


class _StableProxy(_Proxy):
    """Key positions as the listener keeps them: one tuple until a position is learned."""

    def __init__(self, catalog, positions):
        super().__init__(catalog, positions)
        self.key = tuple(sorted(positions.items()))

    def key_positions_of(self, database):
        return self.positions, self.key


def test_a_prepared_statement_keeps_its_analysis_for_its_catalog():
    from pgshard.protocol.messages import BindMsg
    from pgshard.proxy.statements import Statement
    from pgshard.sql import analysis as sp

    proxy = _StableProxy(CATALOG, {})
    t = Targeting(_Session(proxy))
    st = Statement("SELECT * FROM items WHERE id = $1", (23,), named=True)
    for key in (1, 2, 3, 4, 5, 6, 7, 8):
        bind = BindMsg("", st.global_name, (0,), [str(key).encode()], ())
        assert t.target(st.plan, bind, st) == _owner(CATALOG, key)
    tables, positions, a = st.analysis
    assert tables is CATALOG.tables and positions is proxy.key and a.keys is not None
    assert t.analyze(st.sql, st) is a                      # no lookup by text
    # A new catalog (another table set) or a learned key position: analysed afresh.
    other = Catalog.initial(SHARDS, {"items": "id", "users": "uid"}, vnodes_per_shard=8)
    proxy.catalog = other
    t.analyze(st.sql, st)
    assert st.analysis[0] is other.tables
    proxy.key = (("items", 0),)
    t.analyze(st.sql, st)
    assert st.analysis[1] is proxy.key
    assert st.analysis[2] == sp.analyze(st.sql, other.tables, proxy.key)
    # Not the statement's own text: nothing kept.
    assert t.analyze("SELECT * FROM items WHERE id = 9", st).keys is not None
    assert st.analysis[1] is proxy.key and st.analysis[0] is other.tables
