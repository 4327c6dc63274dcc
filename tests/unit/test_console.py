"""The console's pure cores: ring lookups against the routing function, the overview's
alerts, and the static file resolver's confinement to the bundle directory."""

from __future__ import annotations

import math
import random
import uuid

import pytest

from pgshard.control.console import resolve_static
from pgshard.control.overview import Facts, PoolUse, alerts, assemble_overview, ring_lookup
from pgshard.ring import hashing
from pgshard.ring.catalog import Catalog, Fence, Shard
from pgshard.ring.ring import MAX_TOKEN

CAT = Catalog.initial([Shard("s0", "postgresql://a@h:1/d", ("postgresql://a@h:2/d",)),
                       Shard("s1", "postgresql://a@h:3/d"), Shard("s2", "postgresql://a@h:4/d")],
                      {"t": "id"}, vnodes_per_shard=64)


# ---------------------------------------------------------------------- ring lookup

def test_lookup_is_the_routing_function_for_many_keys():
    rng = random.Random(7)
    keys = [str(rng.randrange(-10**12, 10**12)) for _ in range(300)]
    keys += ["", "ä", "x" * 200, str(uuid.UUID(int=rng.getrandbits(128)))]
    for key in keys:
        if not key:
            continue
        got = ring_lookup(CAT, key)
        canonical = hashing.canonical_key(key)
        assert got["token"] == hashing.token(canonical)
        assert got["shard"] == CAT.shard_for_key(canonical).name
        lo, hi = got["range"]["lo"], got["range"]["hi"]
        t = got["token"]
        assert got["vnode_token"] == hi and CAT.ring.owner(hi) == got["shard"]
        assert (lo < t <= hi) if not got["range"]["wraps"] else (t <= hi or t > lo)


@pytest.mark.parametrize("written, kind, same_as", [
    ("042", "int", 42), (" +42 ", "int", 42), ("0x2A", "int", 42), ("-7", "int", -7),
    ("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "uuid",
     uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
    ("42", "auto", 42), ("hello", "text", "hello"),
])
def test_lookup_normalises_like_sql_literals(written, kind, same_as):
    got = ring_lookup(CAT, written, kind)
    assert got["token"] == hashing.shard_key_token(same_as)
    assert got["canonical"] == hashing.canonical_key(same_as).decode()


def test_lookup_of_042_as_text_differs_from_the_integer():
    assert ring_lookup(CAT, "042", "text")["canonical"] == "042"
    assert ring_lookup(CAT, "042", "int")["canonical"] == "42"


@pytest.mark.parametrize("written, kind", [("4x2", "int"), ("not-a-uuid", "uuid")])
def test_lookup_refuses_malformed_typed_keys(written, kind):
    with pytest.raises(hashing.InvalidKey):
        ring_lookup(CAT, written, kind)


def test_lookup_wraps_past_the_last_token_and_reports_fences():
    last = CAT.ring.tokens[-1]
    assert last < MAX_TOKEN   # so some tokens lie past it and wrap to the first vnode
    key = next(str(i) for i in range(10**6) if hashing.token(str(i).encode()) > last)
    got = ring_lookup(CAT, key)
    assert got["range"]["wraps"] and got["vnode_token"] == CAT.ring.tokens[0]
    assert got["shard"] == CAT.ring.owners[0]
    fenced = CAT.evolve(fences=(Fence(got["token"] - 1, got["token"], "job-1"),))
    assert ring_lookup(fenced, key)["fenced"] == {"lo": got["token"] - 1,
                                                  "hi": got["token"], "job": "job-1"}
    assert got["fenced"] is None


# ---------------------------------------------------------------------- overview

def facts(servers=None, routers=None, store_ok=True, catalog=CAT, **kw) -> Facts:
    ok_primary = {"dsn": "h:1", "reachable": True, "in_recovery": False}
    default = {s.name: {"primary": dict(ok_primary),
                        "replicas": [{"dsn": "h:2", "healthy": True, "lag_seconds": 0.0,
                                      "lag_bytes": 0}] * len(s.replicas)}
               for s in catalog.shards}
    return Facts(catalog=catalog,
                 health={"node_id": "n1", "role": "all", "catalog_version": catalog.version,
                         "store": {"backend": "sqlite", "reachable": store_ok,
                                   "last_error": None if store_ok else "gone"}},
                 servers={**default, **(servers or {})},
                 pools=kw.get("pools", {}), queries=kw.get("queries", {}),
                 errors_total=0, routers=routers if routers is not None else [
                     {"id": "n1", "catalog_version": catalog.version}],
                 leader="n1", max_replica_lag=10.0, monitor="replica-monitor")


def kinds(doc):
    return sorted((a["severity"], a["kind"], a["subject"]) for a in doc["alerts"])


def test_a_healthy_cluster_has_no_alerts_and_sums_pools_and_queries():
    doc = assemble_overview(facts(pools={("s0", "primary"): PoolUse(3, 1, 2, 0, 4)},
                                  queries={("s0", "primary"): 5, ("s0", "replica:0"): 2,
                                           ("s1", "primary"): 1}))
    assert doc["alerts"] == []
    s0 = doc["shards"][0]
    assert [s["role"] for s in s0["servers"]] == ["primary", "replica:0"]
    assert s0["healthy"] is True and s0["queries_total"] == 7
    assert s0["servers"][0]["pool"] == {"servers": 3, "active": 1, "idle": 2, "waiters": 0,
                                        "max_servers": 4}
    assert doc["queries_total"] == 8
    assert sum(s["vnodes"] for s in doc["shards"]) == len(CAT.ring)
    assert math.isclose(sum(s["ownership"] for s in doc["shards"]), 1.0, abs_tol=1e-5)
    assert doc["routers"][0]["up_to_date"] and doc["routers"][0]["leader"]


@pytest.mark.parametrize("change, expected", [
    ({"servers": {"s1": {"primary": {"dsn": "h:3", "reachable": False,
                                     "last_error": "refused"}}}},
     [("critical", "primary", "s1")]),
    ({"servers": {"s1": {"primary": {"dsn": "h:3", "reachable": True, "in_recovery": True}}}},
     [("critical", "primary", "s1")]),
    ({"servers": {"s0": {"primary": {"dsn": "h:1", "reachable": True, "in_recovery": False},
                         "replicas": [{"healthy": True, "lag_seconds": 42.0,
                                       "lag_bytes": 99}]}}},
     [("warning", "lag", "s0/replica:0")]),
    ({"servers": {"s0": {"primary": {"dsn": "h:1", "reachable": True, "in_recovery": False},
                         "replicas": [{"healthy": False, "reason": "banned"}]}}},
     [("warning", "replica", "s0/replica:0")]),
    ({"routers": [{"id": "n1", "catalog_version": CAT.version},
                  {"id": "old", "catalog_version": CAT.version - 1}]},
     [("warning", "router", "old")]),
    ({"store_ok": False}, [("critical", "store", "metadata store")]),
])
def test_alerts(change, expected):
    assert kinds(assemble_overview(facts(**change))) == expected


def test_a_shard_without_vnodes_and_an_unchecked_primary_are_flagged():
    spare = CAT.evolve(shards=(*CAT.shards, Shard("spare", "postgresql://a@h:9/d")))
    doc = assemble_overview(facts(catalog=spare, servers={"spare": {}}))
    assert kinds(doc) == [("info", "ownership", "spare"), ("warning", "primary", "spare")]
    assert doc["shards"][-1]["healthy"] is None


def test_alerts_sort_most_severe_first():
    doc = assemble_overview(facts(store_ok=False, routers=[{"id": "x", "catalog_version": 0}]))
    assert [a["severity"] for a in alerts(doc)] == ["critical", "warning"]


# ---------------------------------------------------------------------- static files

def test_static_resolver_stays_inside_the_bundle(tmp_path):
    root = tmp_path / "ui"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("i")
    (root / "assets" / "a.js").write_text("a")
    (tmp_path / "secret.txt").write_text("s")
    (root / "assets" / "link").symlink_to(tmp_path / "secret.txt")
    assert resolve_static(root, "assets/a.js") == (root / "assets" / "a.js").resolve()
    assert resolve_static(root, "index.html") == (root / "index.html").resolve()
    for bad in ("../secret.txt", "assets/../../secret.txt", "/etc/passwd", "assets",
                "assets/link", "nope.js", "a\x00b", "", "."):
        assert resolve_static(root, bad) is None, bad
