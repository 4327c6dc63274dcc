"""The vnode ring and topology changes planned as range moves."""

import random
import time

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgshard.protocol.errors import ObjectNotInPrerequisiteState
from pgshard.ring.hashing import canonical_key, token
from pgshard.ring.ranges import (
    RangeMove,
    coalesce,
    diff,
    moved_fraction,
    plan_add,
    plan_merge,
    plan_split,
)
from pgshard.ring.ring import MAX_TOKEN, EmptyRing, Range, Ring

SPACE = 2**32
SHARDS4 = ["s0", "s1", "s2", "s3"]
RING4 = Ring.build(SHARDS4)  # 4 x 256 vnodes, shared by the read-only tests


def sample_tokens(n=2000, seed=0):
    rng = random.Random(seed)
    edges = [0, 1, MAX_TOKEN - 1, MAX_TOKEN]
    return edges + [rng.randrange(SPACE) for _ in range(n)]


def brute_owner(vnodes, t):
    # The definition, spelt out: the smallest token >= t, else the smallest token overall.
    above = [(tok, s) for tok, s in vnodes if tok >= t]
    return min(above or vnodes)[1]


def check_moves(old, new, moves, tokens):
    """The invariant: a token changes owner iff it lies in a move, and then src -> dst."""
    for t in tokens:
        hits = [m for m in moves if m.contains(t)]
        assert len(hits) <= 1
        if hits:
            assert old.owner(t) == hits[0].src
            assert new.owner(t) == hits[0].dst
            assert hits[0].src != hits[0].dst
        else:
            assert old.owner(t) == new.owner(t)
    # Probing each move's edges checks the boundaries exactly, not just statistically.
    for m in moves:
        for t in (m.lo + 1, m.hi):
            assert old.owner(t) == m.src and new.owner(t) == m.dst
        for t in (m.lo, m.hi + 1):
            if 0 <= t <= MAX_TOKEN and not any(o.contains(t) for o in moves):
                assert old.owner(t) == new.owner(t)


# --- the ring -------------------------------------------------------------------------------

def test_vnode_tokens_are_mmh3_of_shard_colon_i():
    assert Ring.vnode_tokens("s1", 3) == [
        mmh3.hash(f"s1:{i}".encode(), 0, False) for i in range(3)
    ]


def test_build_places_every_vnode():
    assert len(RING4) == 4 * 256
    assert RING4.shards() == frozenset(SHARDS4)
    for s in SHARDS4:
        for t in Ring.vnode_tokens(s, 256):
            assert RING4.owner(t) == s


def test_build_is_deterministic():
    assert Ring.build(SHARDS4) == RING4
    assert Ring.build(reversed(SHARDS4)) == RING4
    assert hash(Ring.build(SHARDS4)) == hash(RING4)
    assert Ring(reversed(RING4.vnodes())) == RING4
    assert Ring.build(SHARDS4, 8) != RING4


@pytest.mark.parametrize(("t", "owner"), [
    (0, "a"), (1, "a"), (100, "a"), (101, "b"), (200, "b"), (201, "c"), (300, "c"),
    (301, "a"), (MAX_TOKEN, "a"),  # wraps round to the first vnode
])
def test_owner_small_ring(t, owner):
    ring = Ring([(200, "b"), (100, "a"), (300, "c")])
    assert ring.owner(t) == owner


def test_owner_matches_definition():
    vnodes = RING4.vnodes()
    for t in sample_tokens(300):
        assert RING4.owner(t) == brute_owner(vnodes, t)


def test_shard_for_key():
    for n in range(100):
        key = canonical_key(n)
        assert RING4.shard_for_key(key) == RING4.owner(token(key))


def test_single_vnode_owns_everything():
    ring = Ring([(5, "only")])
    assert {ring.owner(t) for t in (0, 5, 6, MAX_TOKEN)} == {"only"}
    assert ring.ranges() == [Range(-1, MAX_TOKEN, "only")]
    assert ring.ownership() == {"only": 1.0}


def test_empty_ring_has_no_owner():
    ring = Ring()
    assert len(ring) == 0 and not ring.shards() and ring.ranges() == []
    with pytest.raises(EmptyRing) as exc:
        ring.owner(1)
    assert isinstance(exc.value, ObjectNotInPrerequisiteState)
    assert exc.value.sqlstate == "55000"


def test_collision_keeps_the_name_that_sorts_first():
    ring = Ring([(10, "zeta"), (10, "alpha"), (10, "mid"), (20, "zeta")])
    assert ring.vnodes() == ((10, "alpha"), (20, "zeta"))
    assert ring.with_vnodes([(20, "beta")]).vnodes() == ((10, "alpha"), (20, "beta"))
    assert ring.with_vnodes([(10, "beta")]) == ring


def test_vnodes_sorted_and_parallel():
    assert list(RING4.tokens) == sorted(RING4.tokens)
    assert RING4.vnodes() == tuple(zip(RING4.tokens, RING4.owners, strict=True))


@pytest.mark.parametrize("bad", [
    [(-1, "a")], [(2**32, "a")], [(1.5, "a")], [(True, "a")], [(1, "")], [(1, None)],
])
def test_ring_rejects_bad_vnodes(bad):
    with pytest.raises(ValueError):
        Ring(bad)


def test_ring_is_immutable():
    with pytest.raises(AttributeError):
        RING4._tokens = ()
    with pytest.raises(AttributeError):
        RING4.anything = 1


def test_balance_4_shards_256_vnodes():
    share = RING4.ownership()
    assert set(share) == set(SHARDS4)
    assert sum(share.values()) == pytest.approx(1.0, abs=1e-12)
    for s, f in share.items():
        assert 0.20 <= f <= 0.30, (s, f)
    keys = [canonical_key(n) for n in range(20000)]
    counts = {s: 0 for s in SHARDS4}
    for k in keys:
        counts[RING4.shard_for_key(k)] += 1
    for s, c in counts.items():
        assert 0.20 <= c / len(keys) <= 0.30, (s, c)


def test_ranges_small_ring_wraps_in_two_pieces():
    ring = Ring([(100, "a"), (200, "b"), (300, "a")])
    # (200, 300] and the wrap piece (300, MAX] touch and share an owner, so they coalesce.
    assert ring.ranges() == [Range(-1, 100, "a"), Range(100, 200, "b"), Range(200, MAX_TOKEN, "a")]
    assert ring.ranges("b") == [Range(100, 200, "b")]
    ring = Ring([(100, "a"), (200, "a"), (300, "b")])
    # (-1,100] and (100,200] are one run of "a"; the wrap piece (300, MAX] stays apart.
    assert ring.ranges() == [
        Range(-1, 200, "a"), Range(200, 300, "b"), Range(300, MAX_TOKEN, "a"),
    ]


def test_ranges_edges_at_0_and_max():
    ring = Ring([(0, "a"), (MAX_TOKEN, "b")])
    assert ring.ranges() == [Range(-1, 0, "a"), Range(0, MAX_TOKEN, "b")]
    assert ring.owner(0) == "a" and ring.owner(1) == "b" and ring.owner(MAX_TOKEN) == "b"


def check_partition(ring):
    ranges = ring.ranges()
    assert ranges[0].lo == -1 and ranges[-1].hi == MAX_TOKEN
    for a, b in zip(ranges, ranges[1:], strict=False):
        assert a.hi == b.lo and a.shard != b.shard  # contiguous and coalesced
    assert sum(r.size for r in ranges) == SPACE
    for r in ranges:
        for t in (r.lo + 1, r.hi, (r.lo + 1 + r.hi) // 2):
            assert ring.owner(t) == r.shard
    per_shard = [r for s in ring.shards() for r in ring.ranges(s)]
    assert sorted(per_shard, key=lambda r: r.lo) == ranges


def test_ranges_cover_the_token_space_exactly_once():
    check_partition(RING4)


vnode_lists = st.lists(
    st.tuples(st.integers(0, MAX_TOKEN), st.sampled_from(["a", "b", "c", "d"])),
    min_size=1, max_size=40,
)


@given(vnode_lists)
def test_ranges_partition_any_ring(vnodes):
    ring = Ring(vnodes)
    check_partition(ring)
    assert sum(ring.ownership().values()) == pytest.approx(1.0, abs=1e-12)
    for t in [0, MAX_TOKEN] + [tok for tok, _ in vnodes]:
        assert ring.owner(t) == brute_owner(ring.vnodes(), t)


def test_range_semantics():
    r = Range(-1, 10, "a")
    assert r.contains(0) and r.contains(10) and not r.contains(11) and r.size == 11
    with pytest.raises(ValueError):
        Range(10, 10, "a")
    with pytest.raises(ValueError):
        Range(0, 2**32, "a")


def test_json_round_trip():
    data = RING4.to_json()
    assert data[0] == [RING4.tokens[0], RING4.owners[0]]
    assert Ring.from_json(data) == RING4
    assert Ring.from_json([]) == Ring()


@pytest.mark.parametrize("bad", [
    {"a": 1}, [[1]], [[1, "a", 2]], [["1", "a"]], [[1, 2]], "ring", [[-5, "a"]],
])
def test_from_json_rejects(bad):
    with pytest.raises(ValueError):
        Ring.from_json(bad)


def test_with_owners_and_without_shard():
    ring = Ring([(100, "a"), (200, "b"), (300, "a")])
    moved = ring.with_owners({300: "b"})
    assert moved.vnodes() == ((100, "a"), (200, "b"), (300, "b"))
    assert moved.tokens == ring.tokens
    with pytest.raises(ValueError):
        ring.with_owners({150: "b"})  # tokens never move
    with pytest.raises(ValueError):
        ring.without_shard("a")
    assert ring.without_shard("zzz") == ring
    merged = ring.with_owners({100: "b", 300: "b"})
    assert merged.without_shard("a") == merged
    assert merged.shards() == {"b"}


def test_equality_and_hash():
    a = Ring([(1, "a"), (2, "b")])
    b = Ring([(2, "b"), (1, "a")])
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != Ring([(1, "a"), (2, "a")])
    assert a != [(1, "a"), (2, "b")]


# --- range moves ----------------------------------------------------------------------------

def test_plan_add_moves_about_one_over_n_plus_one_to_the_new_shard():
    new, moves = plan_add(RING4, "s4")
    assert new.shards() == frozenset(SHARDS4 + ["s4"])
    assert len(new) == 5 * 256
    assert all(m.dst == "s4" for m in moves)
    assert {m.src for m in moves} == set(SHARDS4)  # it takes from every shard
    frac = moved_fraction(moves)
    assert 0.15 <= frac <= 0.25  # about 1/5
    assert frac == pytest.approx(new.ownership()["s4"], abs=1e-12)
    assert diff(RING4, new) == moves
    # The old vnodes keep their tokens and owners; only new vnodes appear.
    assert set(RING4.vnodes()) <= set(new.vnodes())
    check_moves(RING4, new, moves, sample_tokens())


def test_plan_add_to_empty_ring_moves_nothing():
    new, moves = plan_add(Ring(), "s0", 16)
    assert moves == [] and new == Ring.build(["s0"], 16)


def test_plan_add_rejects_existing_shard():
    with pytest.raises(ValueError):
        plan_add(RING4, "s1")


def test_plan_split_moves_exactly_half_of_the_shard():
    new, moves = plan_split(RING4, "s2", "s2b")
    before = RING4.ownership()["s2"] * SPACE
    assert all(m.src == "s2" and m.dst == "s2b" for m in moves)
    moved = sum(m.size for m in moves)
    assert abs(moved - before / 2) <= 256  # at most one token off per vnode
    share_old, share_new = RING4.ownership(), new.ownership()
    for s in ("s0", "s1", "s3"):
        assert share_new[s] == share_old[s]  # nothing else moves
    assert share_new["s2"] + share_new["s2b"] == pytest.approx(share_old["s2"], abs=1e-12)
    assert len(new) == len(RING4) + 256
    assert set(RING4.vnodes()) <= set(new.vnodes())
    check_moves(RING4, new, moves, sample_tokens())


def test_plan_split_small_ring_cuts_midpoints_and_wraps():
    ring = Ring([(100, "a"), (200, "b"), (MAX_TOKEN - 99, "a")])
    new, moves = plan_split(ring, "a", "n")
    # (MAX-99, 100] wraps: 200 tokens, midpoint 100 past MAX-99, i.e. token 0.
    assert new.vnodes() == (
        (0, "n"), (100, "a"), (200, "b"), (200 + (MAX_TOKEN - 299) // 2, "n"), (MAX_TOKEN - 99, "a"),
    )
    assert moves == [
        RangeMove(-1, 0, "a", "n"),
        RangeMove(200, 200 + (MAX_TOKEN - 299) // 2, "a", "n"),
        RangeMove(MAX_TOKEN - 99, MAX_TOKEN, "a", "n"),
    ]
    check_moves(ring, new, moves, sample_tokens(300))


def test_plan_split_single_vnode_ring_halves_the_space():
    new, moves = plan_split(Ring([(10, "a")]), "a", "b")
    assert moved_fraction(moves) == 0.5
    assert new.ownership() == {"a": 0.5, "b": 0.5}


def test_plan_split_skips_ranges_too_short_to_cut():
    ring = Ring([(10, "a"), (11, "b"), (12, "a")])
    new, moves = plan_split(ring, "b", "c")
    assert new == ring and moves == []
    new, moves = plan_split(ring, "a", "c")
    # (11, 12] has one token and stays; the wrapping range (12, 10] is cut.
    assert all(m.src == "a" and m.dst == "c" for m in moves)
    assert new.owner(12) == "a"


def test_plan_split_rejects():
    with pytest.raises(ValueError):
        plan_split(RING4, "nope", "x")
    with pytest.raises(ValueError):
        plan_split(RING4, "s0", "s1")


def test_plan_merge_hands_everything_to_dst():
    new, moves = plan_merge(RING4, "s3", "s1")
    assert new.tokens == RING4.tokens
    assert "s3" not in new.shards()
    assert all(m.src == "s3" and m.dst == "s1" for m in moves)
    assert coalesce(RING4.ranges("s3")) == RING4.ranges("s3")
    assert [(m.lo, m.hi) for m in moves] == [(r.lo, r.hi) for r in RING4.ranges("s3")]
    assert moved_fraction(moves) == pytest.approx(RING4.ownership()["s3"], abs=1e-12)
    assert new.ownership()["s1"] == pytest.approx(
        RING4.ownership()["s1"] + RING4.ownership()["s3"], abs=1e-12)
    assert new.without_shard("s3") == new
    check_moves(RING4, new, moves, sample_tokens())


def test_plan_merge_rejects():
    with pytest.raises(ValueError):
        plan_merge(RING4, "s0", "s0")
    with pytest.raises(ValueError):
        plan_merge(RING4, "nope", "s0")


def test_split_then_merge_back_restores_ownership():
    split, _ = plan_split(RING4, "s0", "s0b")
    merged, moves = plan_merge(split, "s0b", "s0")
    assert merged.ownership() == RING4.ownership()
    assert diff(RING4, merged) == []
    assert moved_fraction(moves) == pytest.approx(moved_fraction(diff(RING4, split)), abs=0)


def test_coalesce():
    moves = [
        RangeMove(20, 30, "a", "b"), RangeMove(-1, 10, "a", "b"), RangeMove(10, 20, "a", "b"),
        RangeMove(30, 40, "a", "c"), RangeMove(50, 60, "a", "c"), RangeMove(60, 70, "b", "c"),
    ]
    assert coalesce(moves) == [
        RangeMove(-1, 30, "a", "b"), RangeMove(30, 40, "a", "c"), RangeMove(50, 60, "a", "c"),
        RangeMove(60, 70, "b", "c"),
    ]
    assert coalesce([]) == []
    assert moved_fraction(moves) == 61 / SPACE


def test_diff_identical_and_empty():
    assert diff(RING4, RING4) == []
    assert diff(Ring(), Ring()) == []
    with pytest.raises(ValueError):
        diff(Ring(), RING4)


def test_diff_small_rings():
    old = Ring([(100, "a"), (200, "b")])
    new = Ring([(100, "a"), (150, "c"), (200, "b"), (MAX_TOKEN, "b")])
    assert diff(old, new) == [RangeMove(100, 150, "b", "c"), RangeMove(200, MAX_TOKEN, "a", "b")]
    assert diff(new, old) == [RangeMove(100, 150, "c", "b"), RangeMove(200, MAX_TOKEN, "b", "a")]


@settings(max_examples=60, deadline=None)
@given(vnode_lists, vnode_lists, st.lists(st.integers(0, MAX_TOKEN), max_size=50))
def test_diff_invariant_random_rings(a, b, keys):
    old, new = Ring(a), Ring(b)
    moves = diff(old, new)
    edges = [0, MAX_TOKEN] + [t for t, _ in a + b] + [min(t + 1, MAX_TOKEN) for t, _ in a + b]
    check_moves(old, new, moves, keys + edges)
    assert coalesce(moves) == moves


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=4, unique=True),
    st.integers(1, 24),
    st.data(),
)
def test_plans_keep_the_invariant(shards, vnodes, data):
    ring = Ring.build(shards, vnodes)
    keys = data.draw(st.lists(st.integers(0, MAX_TOKEN), min_size=20, max_size=80))
    keys += [t for t, _ in ring.vnodes()] + [min(t + 1, MAX_TOKEN) for t, _ in ring.vnodes()]

    added, moves = plan_add(ring, "new", vnodes)
    check_moves(ring, added, moves, keys)
    assert all(m.dst == "new" for m in moves)

    victim = data.draw(st.sampled_from(sorted(ring.shards())))
    split, moves = plan_split(ring, victim, "half")
    check_moves(ring, split, moves, keys)
    assert all(m.src == victim and m.dst == "half" for m in moves)
    owned = ring.ownership()[victim] * SPACE
    assert abs(sum(m.size for m in moves) - owned / 2) <= len(ring.ranges(victim)) + len(ring)

    if len(shards) > 1:
        dst = data.draw(st.sampled_from(sorted(ring.shards() - {victim})))
        merged, moves = plan_merge(ring, victim, dst)
        check_moves(ring, merged, moves, keys)
        assert victim not in merged.shards()
        assert moved_fraction(moves) == pytest.approx(ring.ownership()[victim], abs=1e-12)


def test_owner_is_fast():
    # A bisect over a tuple: 100k lookups on a 1024-vnode ring take well under a second.
    tokens = sample_tokens(100_000)
    start = time.thread_time()   # CPU time: a busy machine does not make it fail
    owner = RING4.owner
    for t in tokens:
        owner(t)
    assert time.thread_time() - start < 1.0


def test_owner_is_the_first_vnode_at_or_above_the_token_wrapping_round():
    """Ring.owner's binary search (on C integers when compiled) against bisect over every
    vnode boundary and random tokens, on rings of 1, 3 and 64 vnodes."""
    from bisect import bisect_left

    rng = random.Random(3)
    for ring in (Ring([(7, "a")]), Ring([(0, "a"), (10, "b"), (2**32 - 1, "c")]),
                 Ring.build(["s0", "s1"], vnodes_per_shard=32)):
        tokens = [t for t, _ in ring.vnodes()]
        probes = {0, 2**32 - 1, *tokens, *(t + 1 for t in tokens if t < 2**32 - 1),
                  *(t - 1 for t in tokens if t > 0), *(rng.randrange(2**32) for _ in range(500))}
        for t in probes:
            i = bisect_left(tokens, t)
            assert ring.owner(t) == ring.owners[0 if i == len(tokens) else i], t
