"""The pgbench scripts of `make bench-2pc`, pure: keys of pgbench_accounts picked per shard,
and the cross-shard, same-shard, two-transaction and -N-style scripts built on them.

pgbench has no arrays, so "a random key of shard0" is a pgbench expression: a binary tree of
`case when :i < m then … else … end` over that shard's keys, evaluated lazily (about log2(K)
comparisons per pick, no server round trip), so each script sends only the statements it
measures.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

ACCOUNTS_PER_SCALE = 100_000

# The shard of an aid: a function over the same catalog the proxy seeds (see twophase_pgbench).
ShardOf = Callable[[int], str]


def keys_per_shard(shard_of: ShardOf, shards: Sequence[str], scale: int, per_shard: int,
                   seed: int = 7) -> dict[str, list[int]]:
    """per_shard aids of pgbench_accounts (1 .. 100000 * scale) owned by each shard, sorted,
    drawn at random (fixed seed) so they spread over the table."""
    total = ACCOUNTS_PER_SCALE * scale
    if per_shard * len(shards) > total // 2:
        raise ValueError(f"{per_shard} keys per shard is too many for scale {scale}")
    rng = random.Random(seed)
    found: dict[str, set[int]] = {s: set() for s in shards}
    while any(len(v) < per_shard for v in found.values()):
        aid = rng.randint(1, total)
        owner = found.get(shard_of(aid))
        if owner is not None and len(owner) < per_shard:
            owner.add(aid)
    return {s: sorted(v) for s, v in found.items()}


def pick_expression(index_var: str, keys: Sequence[int]) -> str:
    """A pgbench expression worth keys[:index_var] (index_var in 0 .. len(keys) - 1)."""
    if not keys:
        raise ValueError("no keys to pick from")

    def tree(lo: int, hi: int) -> str:
        if hi - lo == 1:
            return str(keys[lo])
        mid = (lo + hi) // 2
        return f"case when :{index_var} < {mid} then {tree(lo, mid)} else {tree(mid, hi)} end"

    return tree(0, len(keys))


def _picks(keys: dict[str, list[int]], first: str, second: str) -> str:
    """\\set lines: :ka a key of `first`, :kb a key of `second` (never in descending order on
    one shard, so two transactions of the same script lock rows in one order)."""
    n = len(keys[first])
    lines = [f"\\set i random(0, {n - 1})", f"\\set j random(0, {n - 1})"]
    if first == second:
        lines += ["\\set lo least(:i, :j)", "\\set hi greatest(:i, :j)"]
        lines += [f"\\set ka {pick_expression('lo', keys[first])}",
                  f"\\set kb {pick_expression('hi', keys[second])}"]
    else:
        lines += [f"\\set ka {pick_expression('i', keys[first])}",
                  f"\\set kb {pick_expression('j', keys[second])}"]
    return "\n".join(lines) + "\n"


DEBIT = "UPDATE pgbench_accounts SET abalance = abalance - :delta WHERE aid = :ka;\n"
CREDIT = "UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :kb;\n"
DELTA = "\\set delta random(1, 5000)\n"


def cross_shard_script(keys: dict[str, list[int]]) -> str:
    """One transaction, one UPDATE on each of two shards: committed with two-phase commit."""
    a, b = sorted(keys)[:2]
    return _picks(keys, a, b) + DELTA + "BEGIN;\n" + DEBIT + CREDIT + "END;\n"


def two_transactions_script(keys: dict[str, list[int]]) -> str:
    """The same two UPDATEs as two single-shard transactions (not atomic together)."""
    a, b = sorted(keys)[:2]
    return (_picks(keys, a, b) + DELTA + "BEGIN;\n" + DEBIT + "END;\n"
            + "BEGIN;\n" + CREDIT + "END;\n")


def same_shard_script(keys: dict[str, list[int]]) -> str:
    """The cross-shard script's shape (one transaction, two UPDATEs) with both keys on one
    shard, picked at random per transaction: the same statements committed in one phase."""
    a, b = sorted(keys)[:2]
    return ("\\set s random(0, 1)\n\\if :s = 0\n" + _picks(keys, a, a) + "\\else\n"
            + _picks(keys, b, b) + "\\endif\n" + DELTA + "BEGIN;\n" + DEBIT + CREDIT + "END;\n")


# pgbench's built-in -N (simple-update) transaction, as a custom script: the built-in one
# reads the scale from pgbench_branches, which is not a sharded table. pgbench_history is
# declared sharded by aid too, so every statement of it goes to the shard of :aid.
SIMPLE_UPDATE_SCRIPT = (
    "\\set aid random(1, 100000 * :scale)\n"
    "\\set bid random(1, 1 * :scale)\n"
    "\\set tid random(1, 10 * :scale)\n"
    "\\set delta random(-5000, 5000)\n"
    "BEGIN;\n"
    "UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n"
    "SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
    "VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);\n"
    "END;\n")
