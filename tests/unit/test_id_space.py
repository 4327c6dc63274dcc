"""The id space (pgshard.ring.id_space): slots never reused, values only of a slot's class and
never below what any shard handed out."""

from __future__ import annotations

import pytest

from pgshard.ring.id_space import IdSpace, IdSpaceFull, aligned, first_value, plan


def test_slots_are_given_in_name_order_and_never_reused():
    space = IdSpace(stride=4).with_shards(["shard1", "shard0"])
    assert space.slots == (("shard0", 0), ("shard1", 1))
    # shard1 merged away: its slot stays taken; a new shard gets the next one.
    grown = space.with_shards(["shard0", "shard2"])
    assert dict(grown.slots) == {"shard0": 0, "shard1": 1, "shard2": 2}
    assert grown.with_shards(["shard2"]) == grown
    assert IdSpace.from_json(grown.to_json()) == grown
    with pytest.raises(IdSpaceFull):
        grown.with_shards(["a", "b"])


@pytest.mark.parametrize("slot, stride, floor, minvalue, want", [
    (0, 64, 0, 1, 1), (1, 64, 0, 1, 2), (63, 64, 0, 1, 64), (0, 64, 1, 1, 65),
    (2, 64, 100, 1, 131), (2, 64, 130, 1, 131), (2, 64, 131, 1, 195), (0, 4, 0, 10, 13),
])
def test_first_value(slot, stride, floor, minvalue, want):
    v = first_value(slot, stride, floor, minvalue)
    assert v == want and v > floor and v >= minvalue and v % stride == (slot + 1) % stride


def test_plan_moves_only_forward_and_leaves_aligned_sequences():
    # fresh serial on slot 1: restarts at 2
    assert plan(1, 64, 1, 1, 1, 2**31 - 1, None, 0) == 2
    # in use up to 5 here, another shard's copy reached 9: above both
    assert plan(0, 64, 1, 1, 1, 2**31 - 1, 5, 9) == 65
    # own value above the cluster floor: never backwards
    assert plan(1, 64, 1, 1, 1, 2**31 - 1, 300, 9) == 322
    assert aligned(1, 64, 64, 2, 130)
    assert plan(1, 64, 64, 2, 1, 2**31 - 1, 130, 500) is None
    # a setval() into another class is realigned
    assert plan(1, 64, 64, 2, 1, 2**31 - 1, 131, 131) == 194
    with pytest.raises(ValueError):
        plan(0, 64, 1, 1, 1, 100, 99, 99)
    with pytest.raises(ValueError):
        plan(0, 64, -1, -1, -100, -1, None, 0)
