"""Cluster-wide unique ids from per-shard sequences, pure: each shard owns a permanent slot,
and its sequences hand out only the values of that slot's residue class modulo STRIDE.

Strategy: a sequence on the shard of slot s runs with INCREMENT BY STRIDE over values
v ≡ s + 1 (mod STRIDE), so no two shards can ever draw the same value. Slots are given to
shards once and never reused (a merged-away shard's ids may still live on its target), so
at most STRIDE shards can ever exist in one cluster. A sequence is only ever moved forward:
its first aligned value lies above every value any shard's copy of it has handed out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

STRIDE = 64


class IdSpaceFull(ValueError):
    """No slot is left for a new shard (STRIDE shards were ever given one)."""


@dataclass(frozen=True)
class IdSpace:
    """The record kept in the metadata store: the stride and every shard's slot."""

    stride: int = STRIDE
    slots: tuple[tuple[str, int], ...] = ()

    def slot(self, shard: str) -> int | None:
        return dict(self.slots).get(shard)

    def with_shards(self, shards: Iterable[str]) -> IdSpace:
        """Slots for shards that have none yet, in name order, after every slot ever given."""
        have = dict(self.slots)
        nxt = max(have.values(), default=-1) + 1
        for name in sorted(set(shards) - set(have)):
            if nxt >= self.stride:
                raise IdSpaceFull(f"no id slot left for shard {name!r}: {self.stride} shards "
                                  "were already given one (ids are unique modulo the stride)")
            have[name] = nxt
            nxt += 1
        return IdSpace(self.stride, tuple(sorted(have.items())))

    def to_json(self) -> dict:
        return {"stride": self.stride, "slots": dict(self.slots)}

    @classmethod
    def from_json(cls, data: Mapping) -> IdSpace:
        stride, slots = data.get("stride"), data.get("slots")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1 \
                or not isinstance(slots, Mapping) \
                or not all(isinstance(v, int) and 0 <= v < stride for v in slots.values()):
            raise ValueError("id space record must be {stride: int >= 1, slots: {shard: slot}}")
        return cls(stride, tuple(sorted(slots.items())))


def residue(slot: int, stride: int) -> int:
    return (slot + 1) % stride


def aligned(slot: int, stride: int, increment: int, start: int, last: int | None) -> bool:
    """The sequence already draws only from this slot's values."""
    r = residue(slot, stride)
    return (increment == stride and start % stride == r
            and (last is None or last % stride == r))


def first_value(slot: int, stride: int, floor: int, minvalue: int = 1) -> int:
    """The smallest value of the slot's class that is greater than floor and >= minvalue."""
    lo = max(floor + 1, minvalue)
    return lo + (residue(slot, stride) - lo) % stride


def plan(slot: int, stride: int, increment: int, start: int, minvalue: int, maxvalue: int,
         last: int | None, floor: int) -> int | None:
    """The value to RESTART an ascending sequence at, or None when nothing is to be done.

    floor: the highest value any shard's copy of this sequence may have handed out (never
    below this copy's own last value: a sequence never moves backwards). ValueError when the
    slot has no value left below maxvalue, or for a descending sequence."""
    if increment < 0:
        raise ValueError("descending sequences cannot be given a shard's slot")
    if aligned(slot, stride, increment, start, last):
        return None
    own = last if last is not None else start - 1
    v = first_value(slot, stride, max(floor, own), minvalue)
    if v > maxvalue:
        raise ValueError(f"no value of slot {slot} is left below the sequence's maximum "
                         f"{maxvalue}")
    return v
