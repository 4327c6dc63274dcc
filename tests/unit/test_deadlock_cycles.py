"""The waits-for cycle search of the distributed deadlock detector, as a table."""

from __future__ import annotations

import pytest

from pgshard.proxy.deadlock import find_cycle

CASES = [
    ("none", {1: {2}, 2: set()}, None),
    ("two", {1: {2}, 2: {1}}, {1, 2}),
    ("three", {1: {2}, 2: {3}, 3: {1}}, {1, 2, 3}),
    ("tail into a cycle", {0: {1}, 1: {2}, 2: {1}}, {1, 2}),
    ("edge to an unknown node", {1: {9}}, None),
    ("diamond without a cycle", {1: {2, 3}, 2: {4}, 3: {4}, 4: set()}, None),
]


@pytest.mark.parametrize("edges,want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_find_cycle(edges, want):
    got = find_cycle(edges)
    assert (set(got) if got is not None else None) == want
