"""Combine the rows of a SELECT that ran on several shards into the client's result, no I/O.

Rows stay wire-format DataRow bodies; only the columns the merge looks at (ORDER BY, GROUP
BY, DISTINCT, aggregates) are decoded, per type OID and format code (protocol.values).
Order of operations, as in PostgreSQL: group and combine aggregates, DISTINCT, ORDER BY,
OFFSET and LIMIT; then the hidden trailing columns the shard SQL added are dropped.

Two ways in: `add` every row then `finish`, or, as rows stream in (pgshard.proxy.fanread),
`row` + `sort_key` for a k-way merge or `accumulate` + `grouped_rows`, through a
`RowWindow` (DISTINCT, OFFSET, LIMIT, wire form) that says when no more rows are needed.
"""

from __future__ import annotations

import decimal
import heapq
import itertools
import struct
from collections.abc import Iterator
from decimal import Decimal

from pgshard.protocol import values as pv
from pgshard.protocol.errors import FeatureNotSupported, ProtocolViolation
from pgshard.sql.fanout_plan import MergeSpec

_I16, _I32 = struct.Struct("!h"), struct.Struct("!i")
_HDR = struct.Struct("!ci")
# Exact decimal addition: as many digits as the sum needs; Inf + -Inf gives NaN, as in PG.
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN,
                         traps=[])


def decode_row(body: bytes) -> list[bytes | None]:
    """The column values of a DataRow body (None for SQL NULL)."""
    try:
        (n,) = _I16.unpack_from(body)
        pos, out = 2, []
        for _ in range(n):
            (ln,) = _I32.unpack_from(body, pos)
            pos += 4
            if ln < 0:
                out.append(None)
            else:
                if pos + ln > len(body):
                    raise ProtocolViolation("DataRow value overruns the message")
                out.append(body[pos:pos + ln])
                pos += ln
    except struct.error as exc:
        raise ProtocolViolation("truncated DataRow message") from exc
    return out


def encode_row(values: list[bytes | None]) -> bytes:
    """A complete DataRow message ('D' header included) holding values."""
    parts = [_I16.pack(len(values))]
    for v in values:
        if v is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(_I32.pack(len(v)))
            parts.append(v)
    body = b"".join(parts)
    return _HDR.pack(b"D", len(body) + 4) + body


def row_description(body: bytes, hidden: int) -> bytes:
    """A complete RowDescription message from a shard's body, without its hidden columns."""
    (n,) = _I16.unpack_from(body)
    pos = 2
    for _ in range(n - hidden):
        pos = body.index(b"\0", pos) + 1 + 18
    out = _I16.pack(n - hidden) + body[2:pos]
    return _HDR.pack(b"T", len(out) + 4) + out


class _Desc:
    """Reverses the order of a sort key (for DESC) without knowing its type."""

    __slots__ = ("v",)

    def __init__(self, v):
        self.v = v

    def __lt__(self, other: _Desc) -> bool:
        return other.v < self.v

    def __eq__(self, other) -> bool:
        return self.v == other.v

    def __hash__(self) -> int:
        return hash(self.v)


class _Group:
    __slots__ = ("row", "acc")

    def __init__(self, row: list, acc: list):
        self.row = row
        self.acc = acc


class Merger:
    """Merges rows from several shards per a MergeSpec; columns are the shard result's
    (name, type OID, format code), hidden columns included."""

    def __init__(self, spec: MergeSpec, columns: list[tuple[str, int, int]]):
        if spec.unmergeable:
            raise FeatureNotSupported(
                f"cannot merge this query across shards: {spec.unmergeable}")
        self.spec = spec
        self.columns = list(columns)
        n = len(self.columns)
        if not 0 <= spec.hidden <= n:
            raise ProtocolViolation(f"merge expects {spec.hidden} hidden columns, row has {n}")
        self._visible = n - spec.hidden
        ix = self._index
        self._order = []
        for i, desc, nulls_first in spec.order_by:
            i = ix(i)
            first = desc if nulls_first is None else nulls_first
            self._order.append((i, desc, (0,) if first else (2,), self._key_fn(i, "sort")))
        self._grouped = spec.grouped
        self._group_cols = [(ix(i), self._key_fn(ix(i), None)) for i in spec.group_by]
        self._aggs = [self._aggregate(ix(i), kind) for i, kind in spec.aggregates
                      if kind != "avg"]
        self._avgs = [self._avg(ix(a), ix(s), ix(c)) for a, s, c in spec.avg_parts]
        self._distinct_cols = [(i, self._key_fn(i, None)) for i in range(self._visible)] \
            if spec.distinct else []
        self._streams: dict[int, list] = {}
        self._groups: dict[tuple, _Group] = {}
        self._seq = itertools.count()

    def client_columns(self) -> list[tuple[str, int, int]]:
        """The columns the client sees: the shard's minus the hidden ones."""
        return self.columns[:self._visible]

    # -- setup -------------------------------------------------------------------------

    def _index(self, i: int) -> int:
        j = i + len(self.columns) if i < 0 else i
        if not 0 <= j < len(self.columns):
            raise ProtocolViolation(f"merge column {i} is not in a row of "
                                    f"{len(self.columns)} columns")
        return j

    def _key_fn(self, i: int, what: str | None):
        _, oid, fmt = self.columns[i]
        try:
            return pv.sort_key(oid, fmt)
        except FeatureNotSupported:
            if what is None:
                return bytes      # equality of the wire bytes suffices to group or dedupe
            raise

    def _aggregate(self, i: int, kind: str):
        _, oid, fmt = self.columns[i]
        if kind == "count":
            if oid != pv.INT8:
                raise pv.unsupported(oid, fmt, "count")
            return i, kind, pv.number_codec(oid, fmt)
        if kind == "sum":
            return i, kind, pv.number_codec(oid, fmt)
        if kind in ("min", "max"):
            return i, kind, pv.sort_key(oid, fmt)
        raise FeatureNotSupported(f"aggregate {kind} cannot be combined across shards")

    def _avg(self, a: int, s: int, c: int):
        _, oid, fmt = self.columns[a]
        if oid not in (pv.NUMERIC, pv.FLOAT8):
            raise pv.unsupported(oid, fmt, "average")
        _, soid, sfmt = self.columns[s]
        _, coid, cfmt = self.columns[c]
        if coid != pv.INT8 or soid not in (pv.INT8, pv.NUMERIC, pv.FLOAT4, pv.FLOAT8):
            raise pv.unsupported(soid if coid == pv.INT8 else coid, sfmt, "average")
        # A float4 partial sum has lost precision; the shard's own float8 avg times its
        # count has not.
        weighted = soid == pv.FLOAT4
        dec = pv.number_codec(pv.FLOAT8, fmt)[0] if weighted else pv.number_codec(soid, sfmt)[0]
        return (a, s, c, weighted, dec, pv.number_codec(coid, cfmt)[0],
                pv.number_codec(oid, fmt)[1], oid)

    # -- input -------------------------------------------------------------------------

    @property
    def ordered(self) -> bool:
        """Rows of several shards must be interleaved by the ORDER BY (a k-way merge)."""
        return bool(self._order)

    def row(self, row_body: bytes) -> list:
        """The values of one DataRow body from a shard, checked against the columns."""
        row = decode_row(row_body)
        if len(row) != len(self.columns):
            raise ProtocolViolation(f"DataRow has {len(row)} columns, expected "
                                    f"{len(self.columns)}")
        return row

    def sort_key(self, row: list) -> tuple:
        """What orders row among the others (the ORDER BY, NULLS FIRST/LAST included)."""
        return self._sort_key(row)

    def add(self, shard_index: int, row_body: bytes) -> None:
        """One DataRow body from a shard (each shard's rows in its ORDER BY order), kept
        for finish()."""
        row = self.row(row_body)
        if not self._grouped:
            stream = self._streams.setdefault(shard_index, [])
            stream.append((self._sort_key(row), next(self._seq), row))
            return
        self.accumulate(row)

    def accumulate(self, row: list) -> None:
        """Fold one row into its group (GROUP BY or aggregates): memory per group, not row."""
        key = tuple(None if row[i] is None else fn(row[i]) for i, fn in self._group_cols)
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = _Group(row, [None] * (len(self._aggs) + len(self._avgs)))
        acc = g.acc
        for n, (i, kind, codec) in enumerate(self._aggs):
            v = row[i]
            if v is None:
                continue
            if kind in ("count", "sum"):
                x = codec[0](v)
                acc[n] = x if acc[n] is None else _add(acc[n], x)
            else:
                k = codec(v)
                best = acc[n]
                if best is None or (k < best[0] if kind == "min" else best[0] < k):
                    acc[n] = (k, v)
        base = len(self._aggs)
        for n, (a, s, c, weighted, dec, cdec, _, _) in enumerate(self._avgs):
            cnt = 0 if row[c] is None else cdec(row[c])
            src = row[a] if weighted else row[s]
            if not cnt or src is None:
                continue
            x = dec(src) * cnt if weighted else dec(src)
            total, count = acc[base + n] or (0, 0)
            acc[base + n] = (_add(total, x), count + cnt)

    # -- output ------------------------------------------------------------------------

    def finish(self) -> list[bytes]:
        """The merged DataRow messages for the client, in order, hidden columns dropped."""
        if self._grouped:
            rows: Iterator[list] = self.grouped_rows()
        else:
            streams = [self._streams[k] for k in sorted(self._streams)]
            if self._order:
                merged = heapq.merge(*streams, key=lambda item: item[:2])
            else:
                merged = itertools.chain.from_iterable(streams)
            rows = (row for _, _, row in merged)
        window = self.window()
        out = []
        for row in rows:
            msg = window.take(row)
            if msg is not None:
                out.append(msg)
            if window.full:
                break
        return out

    def grouped_rows(self) -> Iterator[list]:
        """The combined groups, deduplicated if DISTINCT, in ORDER BY order."""
        rows: Iterator[list] = iter(self._combined())
        if self.spec.distinct:
            rows = self._dedupe(rows)
        if self._order:
            rows = iter(sorted(rows, key=self._sort_key))
        return rows

    def window(self) -> RowWindow:
        """DISTINCT (of ungrouped rows), OFFSET and LIMIT for rows in their final order."""
        spec = self.spec
        distinct = self._distinct_cols if spec.distinct and not self._grouped else None
        return RowWindow(spec.offset, spec.limit, self._visible, len(self.columns), distinct)

    def _combined(self) -> list[list]:
        out = []
        for g in self._groups.values():
            row = list(g.row)
            for n, (i, kind, codec) in enumerate(self._aggs):
                v = g.acc[n]
                if kind == "count":
                    row[i] = codec[1](v or 0)
                elif kind == "sum":
                    row[i] = None if v is None else codec[1](v)
                else:
                    row[i] = None if v is None else v[1]
            base = len(self._aggs)
            for n, (a, _, _, _, _, _, enc, oid) in enumerate(self._avgs):
                v = g.acc[base + n]
                if v is None:
                    row[a] = None
                elif oid == pv.NUMERIC:
                    total, count = v
                    row[a] = enc(pv.numeric_div(Decimal(total) if not isinstance(
                        total, Decimal) else total, count))
                else:
                    total, count = v
                    row[a] = enc(float(total) / count)
            out.append(row)
        return out

    def _sort_key(self, row: list) -> tuple:
        key = []
        for i, desc, null_rank, fn in self._order:
            v = row[i]
            if v is None:
                key.append(null_rank)
            else:
                k = fn(v)
                key.append((1, _Desc(k) if desc else k))
        return tuple(key)

    def _dedupe(self, rows) -> Iterator[list]:
        seen = set()
        cols = self._distinct_cols
        for row in rows:
            k = tuple(None if row[i] is None else fn(row[i]) for i, fn in cols)
            if k not in seen:
                seen.add(k)
                yield row


class RowWindow:
    """OFFSET, LIMIT and DISTINCT over merged rows as they come, and their wire form.

    take() answers the DataRow to send for one row, or None when the row is skipped;
    once `full`, no later row can be sent (the shards need not be read any further)."""

    __slots__ = ("_skip", "_left", "_visible", "_distinct", "_seen", "count", "passthrough",
                 "needs_values")

    def __init__(self, offset: int, limit: int | None, visible: int, width: int,
                 distinct: list | None = None):
        self._skip = offset
        self._left = limit
        self._visible = visible
        self._distinct = distinct
        self._seen: set = set()
        self.count = 0
        # The shard's own DataRow is what the client gets: no hidden column to drop.
        self.passthrough = visible == width
        self.needs_values = not self.passthrough or distinct is not None

    @property
    def full(self) -> bool:
        return self._left is not None and self._left <= 0

    def take(self, row: list | None, frame: bytes | None = None) -> bytes | None:
        """The DataRow for row (frame: the shard's DataRow message, reused when it is
        already what the client gets), or None to skip it."""
        if self._distinct is not None:
            k = tuple(None if row[i] is None else fn(row[i]) for i, fn in self._distinct)
            if k in self._seen:
                return None
            self._seen.add(k)
        if self._skip:
            self._skip -= 1
            return None
        if self._left is not None:
            if self._left <= 0:
                return None
            self._left -= 1
        self.count += 1
        if frame is not None and self.passthrough:
            return frame
        return encode_row(row[:self._visible])

    def bulk(self) -> int | None:
        """How many rows may go out as they are, unexamined, right now: 0 while each must
        be looked at (DISTINCT, hidden columns, OFFSET still skipping), else the rows the
        LIMIT leaves (None: no limit)."""
        if not self.passthrough or self._distinct is not None or self._skip:
            return 0
        return self._left

    def took(self, n: int) -> None:
        """n rows went out unexamined (at most bulk())."""
        self.count += n
        if self._left is not None:
            self._left -= n


def _add(a, b):
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        return _EXACT.add(Decimal(a) if not isinstance(a, Decimal) else a, b)
    return a + b
