"""Topology changes (add, split, merge) planned as range moves between two rings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pgshard.ring.ring import MAX_TOKEN, TOKEN_SPACE, Ring, TokenSpan


@dataclass(frozen=True, slots=True)
class RangeMove(TokenSpan):
    """A span of tokens whose owner changes from src to dst."""

    src: str
    dst: str


def diff(old_ring: Ring, new_ring: Ring) -> list[RangeMove]:
    """The coalesced moves, by ascending lo, that turn old_ring's ownership into new_ring's."""
    if not old_ring or not new_ring:
        if not old_ring and not new_ring:
            return []
        raise ValueError("cannot diff against an empty ring: its tokens have no owner")
    # Ownership can only change at a token of either ring, so between consecutive breakpoints
    # both owners are constant and the owner of the upper end speaks for the whole interval.
    breaks = sorted(set(old_ring.tokens) | set(new_ring.tokens) | {MAX_TOKEN})
    moves = []
    lo = -1
    for hi in breaks:
        src, dst = old_ring.owner(hi), new_ring.owner(hi)
        if src != dst:
            moves.append(RangeMove(lo, hi, src, dst))
        lo = hi
    return coalesce(moves)


def plan_add(
    ring: Ring, new_shard: str, vnodes_per_shard: int = 256
) -> tuple[Ring, list[RangeMove]]:
    """Place new_shard's vnodes at their mmh3 tokens; each takes its range from its successor."""
    if new_shard in ring.shards():
        raise ValueError(f"shard {new_shard!r} is already in the ring")
    if vnodes_per_shard < 1:
        raise ValueError("vnodes_per_shard must be at least 1")
    if not ring:
        # The first shard owns everything; there is nowhere to move data from.
        return Ring.build([new_shard], vnodes_per_shard), []
    new_ring = ring.with_vnodes(
        (t, new_shard) for t in Ring.vnode_tokens(new_shard, vnodes_per_shard)
    )
    return new_ring, diff(ring, new_ring)


def plan_split(ring: Ring, shard: str, new_shard: str) -> tuple[Ring, list[RangeMove]]:
    """Cut each of shard's vnode ranges at its midpoint; new_shard takes the lower halves."""
    if shard not in ring.shards():
        raise ValueError(f"shard {shard!r} owns nothing in the ring")
    if new_shard in ring.shards():
        raise ValueError(f"shard {new_shard!r} is already in the ring")
    tokens, owners = ring.tokens, ring.owners
    cuts = []
    for i, (t, owner) in enumerate(zip(tokens, owners, strict=True)):
        if owner != shard:
            continue
        prev = tokens[i - 1]  # i == 0 wraps to the last vnode
        # A ring of one vnode spans the whole space: (t, t] going all the way round.
        length = (t - prev) % TOKEN_SPACE or TOKEN_SPACE
        if length < 2:
            continue
        # prev < mid < t on the ring, so the new token can never collide with an existing one.
        cuts.append(((prev + length // 2) % TOKEN_SPACE, new_shard))
    new_ring = ring.with_vnodes(cuts)
    return new_ring, diff(ring, new_ring)


def plan_merge(ring: Ring, src: str, dst: str) -> tuple[Ring, list[RangeMove]]:
    """Hand every vnode of src to dst (owners change, tokens stay); src then owns nothing."""
    if src == dst:
        raise ValueError("cannot merge a shard into itself")
    if src not in ring.shards():
        raise ValueError(f"shard {src!r} owns nothing in the ring")
    new_ring = ring.with_owners({t: dst for t, s in ring.vnodes() if s == src})
    return new_ring, diff(ring, new_ring)


def coalesce(moves: Iterable[RangeMove]) -> list[RangeMove]:
    """Moves by ascending lo, with touching moves of the same src and dst merged into one."""
    out: list[RangeMove] = []
    for m in sorted(moves, key=lambda m: (m.lo, m.hi)):
        if out and out[-1].hi == m.lo and out[-1].src == m.src and out[-1].dst == m.dst:
            out[-1] = RangeMove(out[-1].lo, m.hi, m.src, m.dst)
        else:
            out.append(m)
    return out


def moved_fraction(moves: Iterable[RangeMove]) -> float:
    """The fraction of the token space the moves cover."""
    return sum(m.size for m in moves) / TOKEN_SPACE
