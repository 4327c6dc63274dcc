"""The pure sharding core: canonical keys and tokens, the vnode ring, range moves, the catalog."""

from pgshard.ring.catalog import Catalog, Fence, Shard, UnknownShard
from pgshard.ring.hashing import (
    BPCHAR,
    INT2,
    INT4,
    INT8,
    NAME,
    TEXT,
    UNKNOWN,
    UNSPECIFIED,
    UUID,
    VARCHAR,
    InvalidKey,
    UnsupportedKeyType,
    canonical_key,
    key_from_literal,
    key_from_param,
    shard_key_token,
    token,
)
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

__all__ = [
    "BPCHAR", "INT2", "INT4", "INT8", "MAX_TOKEN", "NAME", "TEXT", "UNKNOWN", "UNSPECIFIED",
    "UUID", "VARCHAR",
    "Catalog", "EmptyRing", "Fence", "InvalidKey", "Range", "RangeMove", "Ring", "Shard",
    "UnknownShard", "UnsupportedKeyType",
    "canonical_key", "coalesce", "diff", "key_from_literal", "key_from_param",
    "moved_fraction", "plan_add", "plan_merge", "plan_split", "shard_key_token", "token",
]
