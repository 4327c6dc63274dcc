"""The consistent-hash ring: sorted vnode tokens, each owned by a shard, and the ranges they cover."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import mmh3

from pgshard.protocol.errors import ObjectNotInPrerequisiteState
from pgshard.ring.hashing import token as key_token

MAX_TOKEN = 2**32 - 1
TOKEN_SPACE = 2**32


def _first_at_or_above(tokens: tuple[int, ...], token: int) -> int:
    """bisect_left(tokens, token): compiled, a binary search on C integers (the tokens are
    32-bit), not a rich comparison of Python ints per step."""
    t = token
    lo = 0
    hi = len(tokens)
    while lo < hi:
        mid = (lo + hi) >> 1
        v = tokens[mid]
        if v < t:
            lo = mid + 1
        else:
            hi = mid
    return lo


class EmptyRing(ObjectNotInPrerequisiteState):
    """The ring has no vnodes, so no key has an owner (SQLSTATE 55000)."""


@dataclass(frozen=True, slots=True)
class TokenSpan:
    """Tokens t with lo < t <= hi; lo == -1 means from token 0 inclusive."""

    lo: int
    hi: int

    def __post_init__(self):
        if not -1 <= self.lo < self.hi <= MAX_TOKEN:
            raise ValueError(f"invalid token range ({self.lo}, {self.hi}]")

    def contains(self, t: int) -> bool:
        """Whether token t lies in (lo, hi]."""
        return self.lo < t <= self.hi

    @property
    def size(self) -> int:
        """How many tokens the span covers."""
        return self.hi - self.lo


@dataclass(frozen=True, slots=True)
class Range(TokenSpan):
    """A span of tokens owned by shard."""

    shard: str


class Ring:
    """An immutable ring of vnodes: a key belongs to the vnode with the smallest token >= its own."""

    __slots__ = ("_tokens", "_owners", "_shards", "_hash")

    def __init__(self, vnodes: Iterable[tuple[int, str]] = ()):
        # Sorting by (token, shard) puts the name that sorts first ahead on a shared token,
        # which is the collision rule: it keeps the token, the others are dropped.
        tokens: list[int] = []
        owners: list[str] = []
        for t, shard in sorted(_checked(vnodes)):
            if tokens and tokens[-1] == t:
                continue
            tokens.append(t)
            owners.append(shard)
        object.__setattr__(self, "_tokens", tuple(tokens))
        object.__setattr__(self, "_owners", tuple(owners))
        object.__setattr__(self, "_shards", frozenset(owners))
        object.__setattr__(self, "_hash", None)

    def __setattr__(self, name, value):
        raise AttributeError("Ring is immutable; build a new one")

    def __delattr__(self, name):
        raise AttributeError("Ring is immutable; build a new one")

    @classmethod
    def build(cls, shards: Iterable[str], vnodes_per_shard: int = 256) -> Ring:
        """A ring with vnodes_per_shard vnodes of each shard at their mmh3 tokens."""
        if vnodes_per_shard < 1:
            raise ValueError("vnodes_per_shard must be at least 1")
        return cls(
            (t, shard)
            for shard in set(shards)
            for t in cls.vnode_tokens(shard, vnodes_per_shard)
        )

    @staticmethod
    def vnode_tokens(shard: str, n: int) -> list[int]:
        """The tokens of vnodes 0..n-1 of a shard: mmh3 of "shard:i"."""
        return [mmh3.hash(f"{shard}:{i}".encode(), seed=0, signed=False) for i in range(n)]

    @property
    def tokens(self) -> tuple[int, ...]:
        """The vnode tokens, ascending."""
        return self._tokens

    @property
    def owners(self) -> tuple[str, ...]:
        """The owner of each vnode, parallel to tokens."""
        return self._owners

    def owner(self, token: int) -> str:
        """The shard owning a token: the vnode with the smallest token >= it, wrapping to the first."""
        tokens = self._tokens
        i = _first_at_or_above(tokens, token)
        if i == len(tokens):
            if not tokens:
                raise EmptyRing(
                    "the ring has no shards", hint="Add a shard before routing keys."
                )
            i = 0
        return self._owners[i]

    def shard_for_key(self, key: bytes) -> str:
        """The shard owning canonical key bytes."""
        return self.owner(key_token(key))

    def shards(self) -> frozenset[str]:
        """The shards that own at least one vnode."""
        return self._shards

    def vnodes(self) -> tuple[tuple[int, str], ...]:
        """All (token, shard) pairs, by ascending token."""
        return tuple(zip(self._tokens, self._owners, strict=True))

    def ranges(self, shard: str | None = None) -> list[Range]:
        """The token ranges by ascending lo, adjacent ones of one shard coalesced; all or one shard's."""
        tokens, owners = self._tokens, self._owners
        if not tokens:
            return []
        # The first vnode's range wraps: (last, MAX_TOKEN] and (-1, first] in linear order.
        pieces = [(-1, tokens[0], owners[0])]
        pieces += [(tokens[i - 1], tokens[i], owners[i]) for i in range(1, len(tokens))]
        if tokens[-1] < MAX_TOKEN:
            pieces.append((tokens[-1], MAX_TOKEN, owners[0]))
        out: list[Range] = []
        lo, hi, owner = pieces[0]
        for nlo, nhi, nowner in pieces[1:]:
            if nowner == owner:
                hi = nhi
            else:
                out.append(Range(lo, hi, owner))
                lo, hi, owner = nlo, nhi, nowner
        out.append(Range(lo, hi, owner))
        if shard is not None:
            out = [r for r in out if r.shard == shard]
        return out

    def ownership(self) -> dict[str, float]:
        """Each shard's fraction of the token space."""
        sizes = dict.fromkeys(sorted(self._shards), 0)
        for r in self.ranges():
            sizes[r.shard] += r.size
        return {shard: size / TOKEN_SPACE for shard, size in sizes.items()}

    def with_owners(self, mapping: Mapping[int, str]) -> Ring:
        """A ring whose vnodes at the given tokens have new owners; tokens themselves never move."""
        unknown = set(mapping) - set(self._tokens)
        if unknown:
            raise ValueError(f"tokens not in the ring: {sorted(unknown)[:5]}")
        return Ring((t, mapping.get(t, s)) for t, s in zip(self._tokens, self._owners, strict=True))

    def with_vnodes(self, pairs: Iterable[tuple[int, str]]) -> Ring:
        """A ring with extra vnodes; on a shared token the shard name that sorts first keeps it."""
        return Ring([*zip(self._tokens, self._owners, strict=True), *pairs])

    def without_shard(self, name: str) -> Ring:
        """The ring once a shard that owns nothing is forgotten; ValueError if it still owns vnodes."""
        if name in self._shards:
            raise ValueError(f"shard {name!r} still owns vnodes; merge it away first")
        return self

    def to_json(self) -> list[list]:
        """The vnodes as [[token, shard], ...]."""
        return [[t, s] for t, s in zip(self._tokens, self._owners, strict=True)]

    @classmethod
    def from_json(cls, data) -> Ring:
        """A ring from to_json() output; ValueError on anything malformed."""
        if not isinstance(data, list):
            raise ValueError("ring must be a list of [token, shard] pairs")
        pairs = []
        for item in data:
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise ValueError(f"ring entry {item!r} is not a [token, shard] pair")
            pairs.append((item[0], item[1]))
        return cls(pairs)

    def __len__(self) -> int:
        return len(self._tokens)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return self._tokens == other._tokens and self._owners == other._owners

    def __hash__(self) -> int:
        if self._hash is None:
            object.__setattr__(self, "_hash", hash((self._tokens, self._owners)))
        return self._hash

    def __repr__(self) -> str:
        return f"<Ring {len(self._tokens)} vnodes, shards={sorted(self._shards)}>"


def _checked(vnodes: Iterable[tuple[int, str]]):
    for t, shard in vnodes:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= MAX_TOKEN:
            raise ValueError(f"vnode token {t!r} is not an unsigned 32-bit integer")
        if not isinstance(shard, str) or not shard:
            raise ValueError(f"vnode owner {shard!r} is not a shard name")
        yield t, shard
