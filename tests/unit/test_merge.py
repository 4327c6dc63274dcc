"""Merging per-shard results on wire bytes: sort merge, LIMIT, aggregates, DISTINCT, values.

Expected values marked "PG" were read from a PostgreSQL 15 server (text or binary output).
"""

import struct
import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgshard.protocol import values as pv
from pgshard.protocol.errors import FeatureNotSupported, ProtocolViolation
from pgshard.sql.analysis import MergeSpec, analyze
from pgshard.sql.merge import Merger, decode_row, encode_row, row_description

INT4, INT8, TEXT, NUMERIC, FLOAT4, FLOAT8 = 23, 20, 25, 1700, 700, 701
BOOL, DATE, TIMESTAMPTZ, UUID, BPCHAR, JSONB, INTERVAL = 16, 1082, 1184, 2950, 1042, 3802, 1186


def t(v):
    """A Python value as a text-format column value."""
    return None if v is None else v if isinstance(v, bytes) else str(v).encode()


def body(values):
    return encode_row([t(v) for v in values])[5:]


def merge(spec, columns, shards):
    """Run a Merger over {shard: [row, …]} and return decoded client rows."""
    m = Merger(spec, [(f"c{i}", oid, fmt) for i, (oid, fmt) in enumerate(columns)])
    for shard, rows in shards.items():
        for row in rows:
            m.add(shard, body(row))
    return [decode_row(msg[5:]) for msg in m.finish()]


def rows(*rs):
    return [[t(v) for v in r] for r in rs]


# -- DataRow / RowDescription ----------------------------------------------------------

def test_encode_decode_row():
    msg = encode_row([b"1", None, b""])
    assert msg == b"D\x00\x00\x00\x13\x00\x03\x00\x00\x00\x011\xff\xff\xff\xff\x00\x00\x00\x00"
    assert decode_row(msg[5:]) == [b"1", None, b""]
    assert decode_row(encode_row([])[5:]) == []


@pytest.mark.parametrize("bad", [b"", b"\x00", b"\x00\x01\x00\x00", b"\x00\x01\x00\x00\x00\x05ab"])
def test_decode_row_rejects_truncated(bad):
    with pytest.raises(ProtocolViolation):
        decode_row(bad)


def _field(name, oid, fmt):
    return name.encode() + b"\0" + struct.pack("!ihihih", 16384, 1, oid, 4, -1, fmt)


def test_row_description_drops_hidden_columns():
    body_ = struct.pack("!h", 3) + _field("id", INT4, 0) + _field("n", TEXT, 1) + \
        _field("h", INT8, 0)
    want = struct.pack("!h", 2) + _field("id", INT4, 0) + _field("n", TEXT, 1)
    assert row_description(body_, 1) == b"T" + struct.pack("!i", len(want) + 4) + want
    assert row_description(body_, 0)[5:] == body_


def test_client_columns_drop_hidden():
    cols = [("id", INT4, 0), ("created_at", TIMESTAMPTZ, 0)]
    m = Merger(MergeSpec(order_by=((1, True, None),), hidden=1), cols)
    assert m.client_columns() == [("id", INT4, 0)]


# -- ORDER BY, LIMIT, OFFSET -----------------------------------------------------------

def test_k_way_merge_ints():
    spec = MergeSpec(order_by=((0, False, None),))
    got = merge(spec, [(INT4, 0)], {0: [[1], [4], [10]], 1: [[-3], [4], [5]], 2: []})
    assert got == rows([-3], [1], [4], [4], [5], [10])


def test_multi_column_asc_desc_with_nulls():
    # ORDER BY status ASC (nulls last), id DESC (nulls first)
    spec = MergeSpec(order_by=((0, False, None), (1, True, None)))
    a = [["a", None], ["a", 3], ["b", 1], [None, 9]]
    b = [["a", 5], ["b", None], ["b", 2], [None, None]]
    assert merge(spec, [(TEXT, 0), (INT4, 0)], {0: a, 1: b}) == rows(
        ["a", None], ["a", 5], ["a", 3], ["b", None], ["b", 2], ["b", 1], [None, None],
        [None, 9])


@pytest.mark.parametrize("desc,nulls_first,shard0,shard1,want", [
    (False, True, [None, 1, 3], [None, 2], [None, None, 1, 2, 3]),
    (False, False, [1, 3, None], [2, None], [1, 2, 3, None, None]),
    (True, False, [3, 1, None], [2, None], [3, 2, 1, None, None]),
    (True, None, [None, 3, 1], [2], [None, 3, 2, 1]),
])
def test_nulls_placement(desc, nulls_first, shard0, shard1, want):
    spec = MergeSpec(order_by=((0, desc, nulls_first),))
    got = merge(spec, [(INT8, 0)], {0: [[v] for v in shard0], 1: [[v] for v in shard1]})
    assert got == rows(*[[v] for v in want])


def test_limit_and_offset_apply_after_the_merge():
    spec = MergeSpec(order_by=((0, False, None),), limit=3, offset=2)
    # each shard ran LIMIT 5 (limit + offset) without OFFSET
    got = merge(spec, [(INT4, 0), (TEXT, 0)],
                {0: [[1, "a"], [3, "c"], [5, "e"]], 1: [[2, "b"], [4, "d"], [6, "f"]]})
    assert got == rows([3, "c"], [4, "d"], [5, "e"])
    assert merge(MergeSpec(limit=0), [(INT4, 0)], {0: [[1]]}) == []
    assert merge(MergeSpec(offset=5), [(INT4, 0)], {0: [[1]], 1: [[2]]}) == []


def test_concatenation_without_order():
    got = merge(MergeSpec(limit=3), [(INT4, 0)], {1: [[3], [4]], 0: [[1], [2]]})
    assert got == rows([1], [2], [3])


def test_hidden_sort_column_is_dropped_and_negative_indexes_count_from_the_end():
    # SELECT * FROM t ORDER BY name  ->  shard SQL "SELECT *, name FROM t ORDER BY name"
    spec = MergeSpec(order_by=((-1, False, None),), hidden=1)
    cols = [(INT4, 0), (TEXT, 0), (TEXT, 0)]
    got = merge(spec, cols, {0: [[1, "b", "b"], [2, "d", "d"]], 1: [[3, "a", "a"]]})
    assert got == rows([3, "a"], [1, "b"], [2, "d"])


def test_binary_format_order():
    spec = MergeSpec(order_by=((0, True, None),))
    cols = [("n", INT8, 1)]
    m = Merger(spec, cols)
    for shard, vals in {0: [9, 2, -7], 1: [5, 4]}.items():
        for v in vals:
            m.add(shard, encode_row([struct.pack("!q", v)])[5:])
    assert [struct.unpack("!q", decode_row(r[5:])[0])[0] for r in m.finish()] == [9, 5, 4, 2, -7]


# -- aggregates ------------------------------------------------------------------------

AGG_SPEC = MergeSpec(order_by=((0, False, None),), group_by=(0,),
                     aggregates=((1, "count"), (2, "sum"), (3, "min"), (4, "max"), (5, "avg"),
                                 (6, "sum"), (7, "count")),
                     avg_parts=((5, 6, 7),), hidden=2)
# SELECT g, count(*), sum(x), min(x), max(x), avg(x) … GROUP BY g ORDER BY g, x int4:
# sum(int4) is int8, avg(int4) numeric; hidden sum(x), count(x).
AGG_COLS = [(TEXT, 0), (INT8, 0), (INT8, 0), (INT4, 0), (INT4, 0), (NUMERIC, 0), (INT8, 0),
            (INT8, 0)]


def test_group_and_combine_text():
    shard0 = [["a", 2, 3, 1, 2, "1.5000000000000000", 3, 2],
              ["b", 1, None, None, None, None, None, 0]]
    shard1 = [["a", 1, 2, 2, 2, "2.0000000000000000", 2, 1],
              ["c", 3, -5, -4, 0, "-1.6666666666666667", -5, 3]]
    got = merge(AGG_SPEC, AGG_COLS, {0: shard0, 1: shard1})
    # PG: avg of 1, 2, 2 is 1.6666666666666667; of -4, -1, 0 is -1.6666666666666667
    assert got == rows(["a", 3, 5, 1, 2, "1.6666666666666667"],
                       ["b", 1, None, None, None, None],
                       ["c", 3, -5, -4, 0, "-1.6666666666666667"])


def test_aggregate_without_group_by_combines_one_row_per_shard():
    spec = MergeSpec(aggregates=((0, "count"), (1, "sum"), (2, "avg"), (3, "sum"),
                                 (4, "count")), avg_parts=((2, 3, 4),), hidden=2)
    cols = [(INT8, 0), (NUMERIC, 0), (NUMERIC, 0), (NUMERIC, 0), (INT8, 0)]
    # x numeric: shard 0 holds 1.005, shard 1 holds 2 and shard 2 nothing (PG: 1.5025000000000000)
    got = merge(spec, cols, {0: [[1, "1.005", "1.0050000000000000", "1.005", 1]],
                             1: [[1, "2", "2.0000000000000000", "2", 1]],
                             2: [[0, None, None, None, 0]]})
    assert got == rows([2, "3.005", "1.5025000000000000"])


def test_empty_aggregates():
    spec = MergeSpec(aggregates=((0, "count"), (1, "sum"), (2, "min"), (3, "avg"), (4, "sum"),
                                 (5, "count")), avg_parts=((3, 4, 5),), hidden=2)
    cols = [(INT8, 0), (INT8, 0), (TEXT, 0), (NUMERIC, 0), (INT8, 0), (INT8, 0)]
    empty = [[0, None, None, None, None, 0]]
    assert merge(spec, cols, {0: empty, 1: empty}) == rows([0, None, None, None])


def test_group_by_without_aggregates_dedupes_groups():
    spec = MergeSpec(order_by=((0, False, None),), group_by=(0,))
    got = merge(spec, [(TEXT, 0)], {0: [["x"], ["y"]], 1: [["x"], [None]], 2: [[None]]})
    assert got == rows(["x"], ["y"], [None])


def test_grouped_order_by_aggregate_desc_with_limit_and_hidden_group_key():
    # SELECT count(*) FROM t GROUP BY status ORDER BY count(*) DESC LIMIT 2
    spec = MergeSpec(order_by=((0, True, None),), limit=2, group_by=(1,),
                     aggregates=((0, "count"),), hidden=1)
    got = merge(spec, [(INT8, 0), (TEXT, 0)],
                {0: [[5, "a"], [1, "b"], [1, "c"]], 1: [[1, "a"], [9, "b"], [3, "c"]]})
    assert got == rows([10], [6])


def test_aggregates_binary_format():
    spec = MergeSpec(aggregates=((0, "count"), (1, "sum"), (2, "min"), (3, "max"), (4, "avg"),
                                 (5, "sum"), (6, "count")), avg_parts=((4, 5, 6),), hidden=2)
    cols = [("count", INT8, 1), ("sum", NUMERIC, 1), ("min", INT4, 1), ("max", INT4, 1),
            ("avg", NUMERIC, 1), ("sum", NUMERIC, 1), ("count", INT8, 1)]
    m = Merger(spec, cols)
    q, i, n = (lambda v: struct.pack("!q", v)), (lambda v: struct.pack("!i", v)), \
        (lambda v: pv.numeric_to_binary(Decimal(v)))
    two_max, one_max = n("18446744073709551614"), n("9223372036854775807")
    m.add(0, encode_row([q(2), two_max, i(-1), i(7), n("0"), two_max, q(2)])[5:])
    m.add(1, encode_row([q(1), one_max, i(3), i(70), None, one_max, q(1)])[5:])
    (out,) = m.finish()
    c, s, lo, hi, avg = decode_row(out[5:])
    assert struct.unpack("!q", c)[0] == 3
    assert pv.numeric_from_binary(s) == Decimal("27670116110564327421")
    assert (struct.unpack("!i", lo)[0], struct.unpack("!i", hi)[0]) == (-1, 70)
    # PG: avg of three int8 max values is 9223372036854775807 (scale 0 here)
    assert pv.numeric_to_text(pv.numeric_from_binary(avg)) == b"9223372036854775807"


def test_avg_float8_from_sum_and_count():
    spec = MergeSpec(aggregates=((0, "avg"), (1, "sum"), (2, "count")), avg_parts=((0, 1, 2),),
                     hidden=2)
    cols = [(FLOAT8, 0), (FLOAT8, 0), (INT8, 0)]
    got = merge(spec, cols, {0: [["0.1", "0.1", 1]], 1: [["0.2", "0.2", 1]]})
    assert got == rows(["0.15000000000000002"])    # PG: avg(0.1, 0.2)


def test_avg_float4_uses_the_shards_float8_average():
    spec = MergeSpec(aggregates=((0, "avg"), (1, "sum"), (2, "count")), avg_parts=((0, 1, 2),),
                     hidden=2)
    m = Merger(spec, [("avg", FLOAT8, 1), ("sum", FLOAT4, 1), ("count", INT8, 1)])
    d, f, q = (lambda v: struct.pack("!d", v)), (lambda v: struct.pack("!f", v)), \
        (lambda v: struct.pack("!q", v))
    m.add(0, encode_row([d(0.1), f(0.3), q(3)])[5:])
    m.add(1, encode_row([d(0.5), f(0.5), q(1)])[5:])
    (out,) = m.finish()
    assert struct.unpack("!d", decode_row(out[5:])[0])[0] == pytest.approx((0.3 + 0.5) / 4)


def test_sum_float_and_int8_overflow():
    spec = MergeSpec(aggregates=((0, "sum"), (1, "sum")))
    got = merge(spec, [(FLOAT8, 0), (FLOAT4, 0)], {0: [["1.5", "1e+06"]], 1: [["1e+20", "2"]]})
    assert got == rows(["1e+20", "1.000002e+06"])       # float4 turns exponential at 1e+06
    with pytest.raises(pv.NumericValueOutOfRange):
        merge(MergeSpec(aggregates=((0, "sum"),)), [(INT8, 0)],
              {0: [[2 ** 62]], 1: [[2 ** 62]]})


def test_min_max_keep_the_winning_bytes():
    spec = MergeSpec(aggregates=((0, "min"), (1, "max")))
    got = merge(spec, [(NUMERIC, 0), (BPCHAR, 0)],
                {0: [["1.50", "ab  "]], 1: [["1.5000", "b   "]], 2: [["2", None]]})
    assert got == rows(["1.50", "b   "])


def test_passthrough_columns_take_a_row_of_the_group():
    spec = MergeSpec(group_by=(0,), aggregates=((2, "sum"),))
    got = merge(spec, [(INT4, 0), (TEXT, 0), (INT8, 0)],
                {0: [[1, "alice", 2]], 1: [[1, "alice", 5]]})
    assert got == rows([1, "alice", 7])


# -- DISTINCT ---------------------------------------------------------------------------

def test_distinct_across_shards_keeps_order():
    spec = MergeSpec(order_by=((0, False, None),), distinct=True, limit=3)
    got = merge(spec, [(TEXT, 0)], {0: [["a"], ["c"], ["d"]], 1: [["a"], ["b"], ["c"]]})
    assert got == rows(["a"], ["b"], ["c"])


def test_distinct_uses_type_equality():
    # numeric 1.0 = 1.00, char(n) ignores trailing blanks, -0 = 0, NaN = NaN, NULL = NULL
    spec = MergeSpec(distinct=True)
    cols = [(NUMERIC, 0), (BPCHAR, 0), (FLOAT8, 0)]
    got = merge(spec, cols, {0: [["1.0", "ab", "0"], ["NaN", None, "NaN"]],
                             1: [["1.00", "ab  ", "-0"], ["NaN", None, "NaN"]]})
    assert got == rows(["1.0", "ab", "0"], ["NaN", None, "NaN"])


def test_distinct_on_an_unsortable_type_compares_bytes():
    got = merge(MergeSpec(distinct=True), [(JSONB, 0)],
                {0: [['{"a": 1}']], 1: [['{"a": 1}'], ['{"a": 2}']]})
    assert got == rows(['{"a": 1}'], ['{"a": 2}'])


# -- unsupported types -------------------------------------------------------------------

@pytest.mark.parametrize("spec,oid", [
    (MergeSpec(order_by=((0, False, None),)), JSONB),
    (MergeSpec(aggregates=((0, "sum"),)), INTERVAL),
    (MergeSpec(aggregates=((0, "max"),)), JSONB),
    (MergeSpec(aggregates=((0, "count"),)), INT4),
    (MergeSpec(aggregates=((0, "avg"), (1, "sum"), (2, "count")), avg_parts=((0, 1, 2),),
               hidden=2), INTERVAL),
])
def test_unsupported_types_raise_with_the_oid(spec, oid):
    cols = [("x", oid, 0), ("s", INTERVAL, 0), ("c", INT8, 0)]
    with pytest.raises(FeatureNotSupported, match=str(oid)) as exc:
        Merger(spec, cols)
    assert exc.value.sqlstate == "0A000"


def test_unmergeable_spec_refuses_rows():
    # The shards were expected to reject the statement (e.g. ORDER BY 5 of 2 columns).
    spec = analyze("SELECT id, name FROM t ORDER BY 5", {"t": "id"}).merge
    with pytest.raises(FeatureNotSupported, match="position 5") as exc:
        Merger(spec, [("id", INT8, 0), ("name", TEXT, 0)])
    assert exc.value.sqlstate == "0A000"


def test_spec_indexes_outside_the_row_are_a_protocol_violation():
    with pytest.raises(ProtocolViolation):
        Merger(MergeSpec(order_by=((3, False, None),)), [("a", INT4, 0)])
    with pytest.raises(ProtocolViolation):
        Merger(MergeSpec(hidden=2), [("a", INT4, 0)])


# -- value order per type ----------------------------------------------------------------

def _sorted_by(oid, fmt, values):
    key = pv.sort_key(oid, fmt)
    return sorted(values, key=key)


@pytest.mark.parametrize("oid,ordered", [
    (INT4, [b"-10", b"-2", b"0", b"3", b"25"]),
    (NUMERIC, [b"-Infinity", b"-1e3", b"-0.5", b"0", b"0.001", b"10", b"Infinity", b"NaN"]),
    (FLOAT8, [b"-Infinity", b"-1e+20", b"-1.5", b"0", b"1e-05", b"3", b"Infinity", b"NaN"]),
    (BOOL, [b"f", b"t"]),
    (TEXT, [b"", b"A", b"B", b"a", b"ab", b"b", "É".encode(), "ü".encode(), "€".encode()]),
    (DATE, [b"-infinity", b"4713-01-01 BC", b"0044-03-15 BC", b"0001-01-01", b"1999-12-31",
            b"2000-01-01", b"12345-01-01", b"infinity"]),
    (TIMESTAMPTZ, [b"-infinity", b"0044-03-15 17:53:28+05:53:28 BC",
                   b"1970-01-01 00:00:00+00", b"2001-02-03 04:05:06+05:30",
                   b"2001-02-02 22:35:06.5+00", b"2001-02-03 04:05:06.500001+05:30",
                   b"infinity"]),
    (1114, [b"0044-03-15 12:00:00.25 BC", b"2000-01-01 00:00:00", b"2000-01-01 00:00:00.1"]),
    (1083, [b"00:00:00", b"12:00:00.5", b"24:00:00"]),
    (UUID, [b"00000000-0000-0000-0000-000000000000", b"0a000000-0000-0000-0000-000000000000",
            b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", b"ffffffff-ffff-ffff-ffff-ffffffffffff"]),
])
def test_text_sort_order(oid, ordered):
    assert _sorted_by(oid, 0, list(reversed(ordered))) == ordered


def test_binary_sort_order_matches_text():
    ts = [-(1 << 63), -5, 0, 7, (1 << 63) - 1]      # -infinity … infinity as int64 µs
    enc = [struct.pack("!q", v) for v in ts]
    assert _sorted_by(TIMESTAMPTZ, 1, enc[::-1]) == enc
    days = [struct.pack("!i", v) for v in (-(1 << 31), -1, 0, 1, (1 << 31) - 1)]
    assert _sorted_by(DATE, 1, days[::-1]) == days
    us = [uuid.UUID(int=v).bytes for v in (0, 1, 1 << 100, (1 << 128) - 1)]
    assert _sorted_by(UUID, 1, us[::-1]) == us
    nums = [pv.numeric_to_binary(Decimal(v)) for v in ("-1e5", "-0.001", "0", "2.5", "NaN")]
    assert _sorted_by(NUMERIC, 1, nums[::-1]) == nums
    fl = [struct.pack("!f", v) for v in (float("-inf"), -1.0, 0.0, 2.5, float("nan"))]
    assert _sorted_by(FLOAT4, 1, fl[::-1]) == fl


def test_non_iso_datestyle_is_refused():
    with pytest.raises(FeatureNotSupported, match="DateStyle"):
        pv.sort_key(TIMESTAMPTZ, 0)(b"Sat Feb 03 04:05:06 2001 PST")


# -- numeric and float encodings -----------------------------------------------------------

# PG binary output of SELECT <value>::numeric
NUMERIC_BINARY = [
    ("0", b"\x00\x00\x00\x00\x00\x00\x00\x00"),
    ("1.50", b"\x00\x02\x00\x00\x00\x00\x00\x02\x00\x01\x13\x88"),
    ("-12345.678", b"\x00\x03\x00\x01@\x00\x00\x03\x00\x01\t)\x1a|"),
    ("10000", b"\x00\x01\x00\x01\x00\x00\x00\x00\x00\x01"),
    ("NaN", b"\x00\x00\x00\x00\xc0\x00\x00\x00"),
    ("0.0001", b"\x00\x01\xff\xff\x00\x00\x00\x04\x00\x01"),
    ("100000000.00", b"\x00\x01\x00\x02\x00\x00\x00\x02\x00\x01"),
    ("0.00001200", b"\x00\x01\xff\xfe\x00\x00\x00\x08\x04\xb0"),
    ("1.8750000000000000", b'\x00\x02\x00\x00\x00\x00\x00\x10\x00\x01".'),
    ("-0.5", b"\x00\x01\xff\xff@\x00\x00\x01\x13\x88"),
    ("123456789012345678901234567890.123456789",
     b"\x00\x0b\x00\x07\x00\x00\x00\t\x00\x0c\r\x80\x1e\xd2\x04\xd2\x16.#4\r\x80\x1e\xd2\x04"
     b"\xd2\x16.#("),
    ("1E-20", b"\x00\x01\xff\xfb\x00\x00\x00\x14\x00\x01"),
]


@pytest.mark.parametrize("text,wire", NUMERIC_BINARY)
def test_numeric_binary_matches_postgres(text, wire):
    d = Decimal(text)
    assert pv.numeric_to_binary(d) == wire
    back = pv.numeric_from_binary(wire)
    assert back == d or (d.is_nan() and back.is_nan())
    assert pv.numeric_to_text(back) == pv.numeric_to_text(d)


def test_numeric_binary_infinities():
    assert pv.numeric_from_binary(b"\x00\x00\x00\x00\xd0\x00\x00\x00") == Decimal("Infinity")
    assert pv.numeric_from_binary(b"\x00\x00\x00\x00\xf0\x00\x00 ") == Decimal("-Infinity")
    for d in (Decimal("Infinity"), Decimal("-Infinity")):
        assert pv.numeric_from_binary(pv.numeric_to_binary(d)) == d


@settings(max_examples=500, deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
    lambda d: -1000 < d.as_tuple().exponent < 1000 and len(d.as_tuple().digits) < 300))
def test_numeric_binary_round_trip(d):
    back = pv.numeric_from_binary(pv.numeric_to_binary(d))
    assert back == d
    # the display scale survives (a positive exponent means scale 0)
    assert back.as_tuple().exponent == min(0, d.as_tuple().exponent) or back.is_zero()
    assert pv.numeric_to_text(back) == pv.numeric_to_text(d)
    assert Decimal(pv.numeric_to_text(d).decode()) == d


@pytest.mark.parametrize("num,count,want", [
    ("60", 3, "20.0000000000000000"),                 # PG: avg of 10, 20, 30 (int8)
    ("3.005", 2, "1.5025000000000000"),                # PG: avg of 1.005, 2
    ("27670116110564327421", 3, "9223372036854775807"),
    ("5", 3, "1.6666666666666667"),
    ("-5", 3, "-1.6666666666666667"),
    ("0.00003", 2, "0.000015000000000000000000"),
    ("123456789013", 2, "61728394506.50000000"),
    ("0", 2, "0.00000000000000000000"),
    ("NaN", 2, "NaN"),
])
def test_numeric_div_matches_postgres_avg(num, count, want):
    assert pv.numeric_to_text(pv.numeric_div(Decimal(num), count)) == want.encode()


@pytest.mark.parametrize("value,single,want", [
    (1e15, False, b"1e+15"), (1e14, False, b"100000000000000"), (123456.5, True, b"123456.5"),
    (1e6, True, b"1e+06"), (1e5, True, b"100000"), (0.0001, False, b"0.0001"),
    (1e-05, False, b"1e-05"), (1.5, False, b"1.5"), (float("nan"), False, b"NaN"),
    (float("-inf"), True, b"-Infinity"), (100.0, False, b"100"), (-0.0, False, b"-0"),
    (1234567.0, True, b"1.234567e+06"), (12345678.0, True, b"1.2345678e+07"),
    (3.4e38, True, b"3.4e+38"), (0.1 + 0.2, False, b"0.30000000000000004"),
    (4.088494268834158e+16, False, b"4.0884942688341584e+16"),   # PG rejects edge digits
    (1770270.75, True, b"1.7702708e+06"),                        # ties go to even
])
def test_float_text_matches_postgres(value, single, want):
    assert pv.float_to_text(value, single) == want


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float8_text_round_trips(x):
    assert float(pv.float_to_text(x)) == x


@settings(max_examples=300, deadline=None)
@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float4_text_round_trips(x):
    back = float(pv.float_to_text(x, True))
    assert struct.unpack("!f", struct.pack("!f", back))[0] == x


def test_days_from_civil():
    assert pv.days_from_civil(2000, 1, 1) == 0
    assert pv.days_from_civil(2000, 1, 2) == 1
    assert pv.days_from_civil(1999, 12, 31) == -1
    assert pv.days_from_civil(1970, 1, 1) == -10957


# -- from analysis to merged rows ----------------------------------------------------------

def test_analysis_plan_drives_the_merger():
    a = analyze("SELECT status, count(*) AS n, avg(qty) FROM orders GROUP BY status "
                "ORDER BY n DESC, status LIMIT 2", {"orders": "user_id"})
    assert a.shard_sql == ("SELECT status, count(*) AS n, avg(qty), sum(qty), count(qty) "
                           "FROM orders GROUP BY status")
    cols = [("status", TEXT, 0), ("n", INT8, 0), ("avg", NUMERIC, 0), ("sum", INT8, 0),
            ("count", INT8, 0)]
    m = Merger(a.merge, cols)
    for shard, rs in {0: [["new", 2, "1.5", 3, 2], ["paid", 1, "4", 4, 1]],
                      1: [["paid", 2, "1", 2, 2], ["void", 1, None, None, 0]]}.items():
        for r in rs:
            m.add(shard, body(r))
    assert [c[0] for c in m.client_columns()] == ["status", "n", "avg"]
    assert [decode_row(r[5:]) for r in m.finish()] == rows(
        ["paid", 3, "2.0000000000000000"], ["new", 2, "1.5000000000000000"])


# -- properties ----------------------------------------------------------------------------

_values = st.lists(st.one_of(st.none(), st.integers(-50, 50)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(_values, st.integers(1, 4), st.booleans(), st.sampled_from([None, True, False]),
       st.one_of(st.none(), st.integers(0, 10)), st.integers(0, 5), st.booleans())
def test_sorted_merge_equals_sorting_everything(vals, shards, desc, nulls_first, limit,
                                                offset, binary):
    first = desc if nulls_first is None else nulls_first

    def order(v):
        return (0,) if v is None and first else (2,) if v is None else (1, -v if desc else v)
    parts = {s: sorted(vals[s::shards], key=order) for s in range(shards)}
    spec = MergeSpec(order_by=((0, desc, nulls_first),), limit=limit, offset=offset)
    m = Merger(spec, [("v", INT8, int(binary))])
    for s, part in parts.items():
        for v in part:
            wire = None if v is None else struct.pack("!q", v) if binary else str(v).encode()
            m.add(s, encode_row([wire])[5:])
    got = [decode_row(r[5:])[0] for r in m.finish()]
    got = [None if g is None else struct.unpack("!q", g)[0] if binary else int(g) for g in got]
    want = sorted(vals, key=order)[offset:None if limit is None else offset + limit]
    assert [order(v) for v in got] == [order(v) for v in want]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.one_of(st.none(), st.integers(-9, 9))),
                max_size=30), st.integers(1, 3))
def test_combined_aggregates_equal_aggregating_everything(rows_, shards):
    spec = MergeSpec(group_by=(0,), aggregates=((1, "count"), (2, "sum"), (3, "min"),
                                                 (4, "max")))
    m = Merger(spec, [("g", TEXT, 0), ("n", INT8, 0), ("s", INT8, 0), ("lo", INT4, 0),
                      ("hi", INT4, 0)])
    for s in range(shards):
        groups = {}
        for g, v in rows_[s::shards]:
            groups.setdefault(g, []).append(v)
        for g, vs in groups.items():          # one partial row per group per shard
            nn = [v for v in vs if v is not None]
            m.add(s, body([g, len(vs), sum(nn) if nn else None, min(nn, default=None),
                           max(nn, default=None)]))
    got = {r[0]: r[1:] for r in (decode_row(x[5:]) for x in m.finish())}
    for g in {g for g, _ in rows_}:
        nn = [v for h, v in rows_ if h == g and v is not None]
        assert got[g.encode()] == [t(sum(1 for h, _ in rows_ if h == g)),
                                   t(sum(nn) if nn else None), t(min(nn, default=None)),
                                   t(max(nn, default=None))]
    assert len(got) == len({g for g, _ in rows_})
