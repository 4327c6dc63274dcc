"""The catalog snapshot: lookups, evolve, fences and the JSON round trip."""

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgshard.protocol.errors import UndefinedObject
from pgshard.ring.catalog import Catalog, Fence, Shard, UnknownShard
from pgshard.ring.hashing import canonical_key, token
from pgshard.ring.ranges import plan_merge, plan_split
from pgshard.ring.ring import MAX_TOKEN, Ring

SHARDS = [
    Shard("s1", "postgresql://pg1:5432/app", ("postgresql://pg1r:5432/app",)),
    Shard("s0", "postgresql://pg0:5432/app", status="draining", weight=2),
]
TABLES = {"Orders": "customer_id", "public.items": "customer_id", "app.events": "tenant"}


@pytest.fixture(scope="module")
def cat():
    return Catalog.initial(SHARDS, TABLES, vnodes_per_shard=32)


def test_initial(cat):
    assert cat.version == 1
    assert cat.vnodes_per_shard == 32
    assert cat.ring == Ring.build(["s0", "s1"], 32)
    assert cat.shard_names() == ("s0", "s1")
    assert [s.name for s in cat.shards] == ["s0", "s1"]  # sorted by name
    assert cat.tables == tuple(sorted(TABLES.items()))
    assert cat.fences == ()


def test_shard_lookup(cat):
    assert cat.shard("s1").replicas == ("postgresql://pg1r:5432/app",)
    assert cat.shard("s0").weight == 2
    with pytest.raises(UnknownShard) as exc:
        cat.shard("s9")
    assert isinstance(exc.value, UndefinedObject)
    assert exc.value.sqlstate == "42704"
    assert "s9" in exc.value.message


def test_shard_for_key_and_token(cat):
    for n in range(50):
        key = canonical_key(n)
        shard = cat.shard_for_key(key)
        assert shard is cat.shard(cat.ring.shard_for_key(key))
        assert cat.shard_for_token(token(key)) is shard


@pytest.mark.parametrize(("table", "column"), [
    ("orders", "customer_id"),
    ("ORDERS", "customer_id"),
    ("public.orders", "customer_id"),
    ("Public.Orders", "customer_id"),
    ("items", "customer_id"),
    ("public.items", "customer_id"),
    ("app.events", "tenant"),
    ("events", None),  # another schema is not on the implied public path
    ("other.orders", None),
    ("customers", None),
])
def test_key_column(cat, table, column):
    assert cat.key_column(table) == column


def test_fences():
    cat = Catalog.initial(SHARDS, TABLES, 8)
    fenced = cat.evolve(fences=(Fence(100, 200, "job-1"), Fence(-1, 5, "job-2")))
    assert fenced.is_fenced(100) is None
    assert fenced.is_fenced(101) == Fence(100, 200, "job-1")
    assert fenced.is_fenced(200).job == "job-1"
    assert fenced.is_fenced(201) is None
    assert fenced.is_fenced(0).job == "job-2"
    assert cat.is_fenced(150) is None


@pytest.mark.parametrize("args", [(5, 5, "j"), (-2, 5, "j"), (0, MAX_TOKEN + 1, "j"), (0, 5, "")])
def test_fence_rejects(args):
    with pytest.raises(ValueError):
        Fence(*args)


def test_evolve_bumps_version_and_leaves_the_original(cat):
    ring, _ = plan_split(cat.ring, "s0", "s2")
    new = cat.evolve(shards=cat.shards + (Shard("s2", "postgresql://pg2/app"),), ring=ring)
    assert new.version == cat.version + 1
    assert new.shard_names() == ("s0", "s1", "s2")
    assert cat.shard_names() == ("s0", "s1")
    assert new.evolve().version == cat.version + 2
    with pytest.raises(TypeError):
        cat.evolve(version=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cat.version = 2


def test_merge_then_remove_shard(cat):
    ring, _ = plan_merge(cat.ring, "s1", "s0")
    merged = cat.evolve(ring=ring.without_shard("s1"))
    removed = merged.evolve(shards=(merged.shard("s0"),))
    assert removed.shard_names() == ("s0",)
    assert {removed.shard_for_key(canonical_key(n)).name for n in range(20)} == {"s0"}


def test_ring_must_name_known_shards(cat):
    with pytest.raises(ValueError, match="s1"):
        cat.evolve(shards=(cat.shard("s0"),))


@pytest.mark.parametrize("changes", [
    {"shards": (SHARDS[0], SHARDS[0])},
    {"tables": {"t": "a", "public.T": "b"}},
    {"tables": {"t": ""}},
    {"tables": (("t",),)},
    {"version": -1},
    {"ring": [[1, "s0"]]},
    {"fences": ((1, 2, "j"),)},
])
def test_catalog_rejects(cat, changes):
    with pytest.raises(ValueError):
        dataclasses.replace(cat, **changes)


def test_equality_ignores_lookup_caches(cat):
    again = Catalog.initial(list(reversed(SHARDS)), dict(reversed(list(TABLES.items()))), 32)
    assert again == cat
    assert hash(again) == hash(cat)


def test_json_round_trip(cat):
    ring, _ = plan_split(cat.ring, "s1", "s2")
    busy = cat.evolve(
        shards=cat.shards + (Shard("s2", "postgresql://pg2/app", status="fenced"),),
        ring=ring,
        fences=(Fence(-1, 1000, "job-7"),),
    )
    data = busy.to_json()
    text = json.dumps(data)
    back = Catalog.from_json(json.loads(text))
    assert back == busy
    assert back.to_json() == data
    assert back.shard("s2").status == "fenced"
    assert back.key_column("public.orders") == "customer_id"
    assert data["tables"] == {k: v for k, v in sorted(TABLES.items())}
    assert data["ring"] == ring.to_json()


def test_from_json_ignores_unknown_fields(cat):
    data = cat.to_json()
    data["added_in_a_later_version"] = True
    data["shards"][0]["zone"] = "eu-1"
    assert Catalog.from_json(data) == cat


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("ring"),
    lambda d: d.pop("version"),
    lambda d: d.update(version="1"),
    lambda d: d.update(shards={}),
    lambda d: d.update(tables=[["t", "c"]]),
    lambda d: d.update(fences={}),
    lambda d: d.update(fences=[{"lo": 0, "hi": 1}]),
    lambda d: d.update(vnodes_per_shard=0),
    lambda d: d["shards"][0].pop("primary"),
    lambda d: d["shards"][0].update(weight="2"),
    lambda d: d["shards"][0].update(replicas="postgresql://x"),
    lambda d: d["ring"].append([5]),
    lambda d: d["ring"].append([5, "unknown-shard"]),
])
def test_from_json_rejects(cat, mutate):
    data = json.loads(json.dumps(cat.to_json()))
    mutate(data)
    with pytest.raises(ValueError):
        Catalog.from_json(data)


@pytest.mark.parametrize("bad", [None, [], "catalog", 42])
def test_from_json_rejects_non_objects(bad):
    with pytest.raises(ValueError):
        Catalog.from_json(bad)


def test_shard_json_round_trip():
    for s in SHARDS:
        assert Shard.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert Shard.from_json({"name": "x", "primary": "postgresql://x"}) == Shard(
        "x", "postgresql://x")
    assert Shard("x", "postgresql://x", ["postgresql://r"]).replicas == ("postgresql://r",)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), min_size=1, max_size=4,
             unique=True),
    st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
                    st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), max_size=4),
    st.integers(1, 8),
)
def test_json_round_trip_any_catalog(names, tables, vnodes):
    shards = [Shard(n, f"postgresql://{n}/db", weight=i) for i, n in enumerate(names)]
    cat = Catalog.initial(shards, tables, vnodes)
    back = Catalog.from_json(json.loads(json.dumps(cat.to_json())))
    assert back == cat
    for table, column in tables.items():
        assert back.key_column(table.upper()) == column


def test_serving_shards_are_the_ones_owning_vnodes():
    shards = [Shard(name=n, primary=f"postgresql://u@h/{n}") for n in ("a", "b", "c")]
    cat = Catalog.initial(shards[:2], {"t": "id"}, vnodes_per_shard=8)
    assert cat.serving_shards() == ("a", "b")
    grown = cat.evolve(shards=tuple(shards))      # c is added but owns nothing yet
    assert grown.serving_shards() == ("a", "b") and grown.shard_names() == ("a", "b", "c")
