"""ByteLRU: a cache bounded by the bytes of its entries (no servers)."""

from __future__ import annotations

import random

import pytest

from pgshard.cache import ByteLRU


def test_get_put_and_accounting():
    c = ByteLRU(100)
    assert c.get("a") is None and c.get("a", 7) == 7
    c.put("a", 1, 30)
    c.put("b", 2, 30)
    assert (c.get("a"), c.get("b"), len(c), c.bytes) == (1, 2, 2, 60)
    c.put("a", 3, 10)           # replacing an entry re-weighs it
    assert (c.get("a"), len(c), c.bytes) == (3, 2, 40)


def test_oldest_dropped_until_the_new_entry_fits():
    c = ByteLRU(100)
    for k in "abcd":
        c.put(k, k, 25)
    assert c.bytes == 100
    c.get("a")                  # a hit makes "a" the newest: "b" is now the oldest
    c.put("e", "e", 50)
    assert [k for k in "abcde" if k in c] == ["a", "d", "e"]
    assert c.bytes == 100


def test_an_entry_heavier_than_the_budget_is_not_stored_and_flushes_nothing():
    c = ByteLRU(100)
    c.put("a", 1, 60)
    c.put("huge", 2, 101)
    assert "huge" not in c and c.get("a") == 1 and c.bytes == 60
    c.put("a", 3, 500)          # an oversized replacement removes the stale value
    assert "a" not in c and c.bytes == 0 and len(c) == 0
    c.put("exact", 4, 100)
    assert c.get("exact") == 4 and c.bytes == 100


def test_clear_pop_resize():
    c = ByteLRU(100)
    for i in range(10):
        c.put(i, i, 10)
    assert c.pop(3) == 3 and c.pop(3, "gone") == "gone" and c.bytes == 90
    c.resize(35)
    assert sorted(k for k in range(10) if k in c) == [7, 8, 9] and c.bytes == 30
    c.clear()
    assert len(c) == 0 and c.bytes == 0 and c.get(9) is None
    with pytest.raises(ValueError):
        c.put("x", 1, -1)


def test_random_operations_keep_the_bound_and_agree_with_a_model():
    rnd = random.Random(13)
    c = ByteLRU(1000)
    model: list[tuple[int, int, int]] = []      # (key, value, weight), oldest first
    for step in range(5000):
        k = rnd.randrange(60)
        if rnd.random() < 0.5:
            got = c.get(k)
            hit = [e for e in model if e[0] == k]
            assert got == (hit[0][1] if hit else None)
            if hit:
                model.remove(hit[0])
                model.append(hit[0])
        else:
            w = rnd.choice([0, 1, 50, 200, 999, 1000, 1001])
            model = [e for e in model if e[0] != k]
            if w <= 1000:
                while model and sum(e[2] for e in model) + w > 1000:
                    model.pop(0)
                model.append((k, step, w))
            c.put(k, step, w)
        assert c.bytes == sum(e[2] for e in model) <= 1000
        assert len(c) == len(model)
