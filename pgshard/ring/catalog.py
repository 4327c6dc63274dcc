"""The catalog: one immutable, versioned snapshot of shards, ring, sharded tables and fences."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pgshard.protocol.errors import UndefinedObject
from pgshard.ring.ring import MAX_TOKEN, Ring


class UnknownShard(UndefinedObject):
    """A shard name the catalog does not know (SQLSTATE 42704)."""


@dataclass(frozen=True)
class Failover:
    """The last change of a shard's primary: when, why, from and to which server, how long."""

    at: str          # ISO 8601 UTC
    kind: str        # failover | switchover
    reason: str
    from_: str       # DSN of the old primary
    to: str          # DSN of the new primary
    seconds: float   # detection (or request) to publication

    def to_json(self) -> dict:
        return {"at": self.at, "kind": self.kind, "reason": self.reason, "from": self.from_,
                "to": self.to, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data) -> Failover:
        obj = _object(data, "failover", required=("at", "kind", "reason", "from", "to",
                                                  "seconds"))
        obj["from_"] = obj.pop("from")
        if not all(isinstance(obj[k], str) for k in ("at", "kind", "reason", "from_", "to")) \
                or isinstance(obj["seconds"], bool) or not isinstance(obj["seconds"], int | float):
            raise ValueError("failover record fields have the wrong types")
        return cls(**obj)


# Shard fields written to JSON only when they differ from these defaults, so catalogs
# without failover history stay byte-identical to what older routers read and write.
_HA_DEFAULTS = {"fenced": (), "sync": (), "sync_quorum": 0, "hold": "", "last_failover": None}


@dataclass(frozen=True)
class Shard:
    """One shard: its primary DSN, replica DSNs, status and weight; for high availability
    also the old primaries fenced off (never routed to until rejoined), the replicas last
    seen synchronous and the quorum the primary waits for (ANY sync_quorum; 0: async), a
    hold on its statements while the manager changes its primary, and the last failover."""

    name: str
    primary: str
    replicas: tuple[str, ...] = ()
    status: str = "active"  # active | fenced | draining | ...
    weight: int = 1
    fenced: tuple[str, ...] = ()
    sync: tuple[str, ...] = ()
    sync_quorum: int = 0
    hold: str = ""          # why statements are held ("" when they are not)
    last_failover: Failover | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"shard name {self.name!r} must be a non-empty string")
        if not isinstance(self.primary, str):
            raise ValueError(f"shard {self.name!r}: primary must be a DSN string")
        if isinstance(self.replicas, str) or not all(isinstance(r, str) for r in self.replicas):
            raise ValueError(f"shard {self.name!r}: replicas must be a list of DSN strings")
        # JSON and callers hand in lists; a tuple keeps the snapshot hashable and immutable.
        object.__setattr__(self, "replicas", tuple(self.replicas))
        for name in ("fenced", "sync"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(d, str) for d in value):
                raise ValueError(f"shard {self.name!r}: {name} must be a list of DSN strings")
            object.__setattr__(self, name, tuple(value))
        if isinstance(self.sync_quorum, bool) or not isinstance(self.sync_quorum, int) \
                or self.sync_quorum < 0:
            raise ValueError(f"shard {self.name!r}: sync_quorum must be a non-negative integer")
        if not isinstance(self.hold, str):
            raise ValueError(f"shard {self.name!r}: hold must be a string")
        if isinstance(self.last_failover, dict):
            object.__setattr__(self, "last_failover", Failover.from_json(self.last_failover))
        elif self.last_failover is not None and not isinstance(self.last_failover, Failover):
            raise ValueError(f"shard {self.name!r}: last_failover must be a failover record")
        if not isinstance(self.status, str) or not self.status:
            raise ValueError(f"shard {self.name!r}: status must be a non-empty string")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or self.weight < 0:
            raise ValueError(f"shard {self.name!r}: weight must be a non-negative integer")

    def to_json(self) -> dict:
        """The shard as a JSON object."""
        return {
            "name": self.name,
            "primary": self.primary,
            "replicas": list(self.replicas),
            "status": self.status,
            "weight": self.weight,
            **{k: (list(v) if isinstance(v, tuple) else
                   v.to_json() if isinstance(v, Failover) else v)
               for k in _HA_DEFAULTS if (v := getattr(self, k)) != _HA_DEFAULTS[k]},
        }

    @classmethod
    def from_json(cls, data) -> Shard:
        """A shard from to_json() output; ValueError on anything malformed."""
        obj = _object(data, "shard", required=("name", "primary"),
                      optional=("replicas", "status", "weight", *_HA_DEFAULTS))
        return cls(**obj)


@dataclass(frozen=True)
class Fence:
    """Writes to tokens in (lo, hi] are held while the resharding job named job moves them."""

    lo: int
    hi: int
    job: str

    def __post_init__(self):
        for v in (self.lo, self.hi):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"fence bound {v!r} is not an integer")
        if not -1 <= self.lo < self.hi <= MAX_TOKEN:
            raise ValueError(f"invalid fence range ({self.lo}, {self.hi}]")
        if not isinstance(self.job, str) or not self.job:
            raise ValueError("fence job must be a non-empty string")

    def contains(self, t: int) -> bool:
        """Whether token t lies in (lo, hi]."""
        return self.lo < t <= self.hi

    def to_json(self) -> dict:
        """The fence as a JSON object."""
        return {"lo": self.lo, "hi": self.hi, "job": self.job}

    @classmethod
    def from_json(cls, data) -> Fence:
        """A fence from to_json() output; ValueError on anything malformed."""
        return cls(**_object(data, "fence", required=("lo", "hi", "job")))


@dataclass(frozen=True)
class Catalog:
    """The versioned snapshot routers route by; changed only by writing a new version."""

    version: int
    shards: tuple[Shard, ...]
    ring: Ring
    tables: tuple[tuple[str, str], ...]
    fences: tuple[Fence, ...] = ()
    vnodes_per_shard: int = 256
    # Shards that hold rows of ranges they do not own (a resharding job between its copy and
    # its cleanup): fan-out reads ask them only for the ranges they own.
    filter_reads: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise ValueError(f"catalog version {self.version!r} must be a non-negative integer")
        if not isinstance(self.ring, Ring):
            raise ValueError("catalog ring must be a Ring")
        shards, fences = tuple(self.shards), tuple(self.fences)
        if not all(isinstance(s, Shard) for s in shards):
            raise ValueError("catalog shards must be Shard objects")
        if not all(isinstance(f, Fence) for f in fences):
            raise ValueError("catalog fences must be Fence objects")
        shards = tuple(sorted(shards, key=lambda s: s.name))
        by_name = {s.name: s for s in shards}
        if len(by_name) != len(shards):
            raise ValueError("catalog lists a shard name twice")
        orphans = self.ring.shards() - by_name.keys()
        if orphans:
            raise ValueError(f"the ring names shards the catalog lacks: {sorted(orphans)}")
        pairs = list(self.tables.items() if isinstance(self.tables, Mapping) else self.tables)
        for pair in pairs:
            if (not isinstance(pair, tuple | list) or len(pair) != 2
                    or not all(isinstance(n, str) and n for n in pair)):
                raise ValueError(f"sharded table entry {pair!r} is not (table, key column)")
        tables = tuple(sorted((t, c) for t, c in pairs))
        columns = {}
        for table, column in tables:
            norm = _table_key(table)
            if norm in columns:
                raise ValueError(f"sharded table {table!r} is listed twice")
            columns[norm] = column
        object.__setattr__(self, "shards", shards)
        object.__setattr__(self, "tables", tables)
        object.__setattr__(self, "fences", fences)
        if isinstance(self.filter_reads, str) or not all(
                isinstance(n, str) and n for n in self.filter_reads):
            raise ValueError("catalog filter_reads must be a list of shard names")
        object.__setattr__(self, "filter_reads", tuple(sorted(set(self.filter_reads))))
        # Lookup tables are plain attributes, not fields: equality and hashing ignore them.
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_columns", columns)
        owning = self.ring.shards()
        object.__setattr__(self, "_serving", tuple(s.name for s in shards if s.name in owning))

    @classmethod
    def initial(
        cls, shards: list[Shard], tables: Mapping[str, str], vnodes_per_shard: int = 256
    ) -> Catalog:
        """Version 1: the given shards on a fresh ring of vnodes_per_shard vnodes each."""
        ring = Ring.build([s.name for s in shards], vnodes_per_shard)
        return cls(1, tuple(shards), ring, tuple(tables.items()), (), vnodes_per_shard)

    def shard(self, name: str) -> Shard:
        """The shard of that name; UnknownShard if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownShard(
                f'shard "{name}" does not exist',
                hint=f"Known shards: {', '.join(self._by_name) or 'none'}.",
            ) from None

    def serving_shards(self) -> tuple[str, ...]:
        """The shards that own vnodes, by name: the ones a keyless read must ask (a shard
        that owns nothing holds no rows anyone may see)."""
        return self._serving

    def shard_names(self) -> tuple[str, ...]:
        """All shard names, sorted."""
        return tuple(self._by_name)

    def shard_for_token(self, t: int) -> Shard:
        """The shard owning a token."""
        return self._by_name[self.ring.owner(t)]

    def shard_for_key(self, key: bytes) -> Shard:
        """The shard owning canonical key bytes."""
        return self._by_name[self.ring.shard_for_key(key)]

    def key_column(self, table: str) -> str | None:
        """The shard key column of a sharded table, or None if the table is not sharded."""
        return self._columns.get(_table_key(table))

    def is_fenced(self, token: int) -> Fence | None:
        """The fence holding writes to a token, if any."""
        for fence in self.fences:
            if fence.lo < token <= fence.hi:
                return fence
        return None

    def evolve(self, **changes) -> Catalog:
        """A copy with the given fields changed and the version bumped by one."""
        if "version" in changes:
            raise TypeError("evolve() sets the version itself")
        return dataclasses.replace(self, version=self.version + 1, **changes)

    def to_json(self) -> dict:
        """The catalog as a JSON object."""
        return {
            "version": self.version,
            "vnodes_per_shard": self.vnodes_per_shard,
            "shards": [s.to_json() for s in self.shards],
            "ring": self.ring.to_json(),
            "tables": dict(self.tables),
            "fences": [f.to_json() for f in self.fences],
            **({"filter_reads": list(self.filter_reads)} if self.filter_reads else {}),
        }

    @classmethod
    def from_json(cls, data) -> Catalog:
        """A catalog from to_json() output; ValueError on anything malformed."""
        obj = _object(data, "catalog", required=("version", "shards", "ring", "tables"),
                      optional=("fences", "vnodes_per_shard", "filter_reads"))
        if not isinstance(obj["shards"], list):
            raise ValueError("catalog shards must be a list")
        if not isinstance(obj["tables"], dict):
            raise ValueError("catalog tables must be an object of table -> key column")
        fences = obj.get("fences", [])
        if not isinstance(fences, list):
            raise ValueError("catalog fences must be a list")
        vnodes = obj.get("vnodes_per_shard", 256)
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise ValueError("vnodes_per_shard must be a positive integer")
        return cls(
            version=obj["version"],
            shards=tuple(Shard.from_json(s) for s in obj["shards"]),
            ring=Ring.from_json(obj["ring"]),
            tables=tuple(obj["tables"].items()),
            fences=tuple(Fence.from_json(f) for f in fences),
            vnodes_per_shard=vnodes,
            filter_reads=_names(obj.get("filter_reads", [])),
        )


def _names(value) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError("catalog filter_reads must be a list of shard names")
    return tuple(value)


def _table_key(table: str) -> str:
    # Unqualified names mean the public schema, so "public.t" and "T" are the same table.
    name = table.lower()
    return name[len("public."):] if name.startswith("public.") else name


def _object(data, what: str, required: Iterable[str], optional: Iterable[str] = ()) -> dict:
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object")
    required = tuple(required)
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{what} lacks {', '.join(missing)}")
    # Unknown fields are dropped so a router can read a catalog written by a newer manager.
    known = set(required) | set(optional)
    return {k: v for k, v in data.items() if k in known}
