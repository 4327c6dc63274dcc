"""A multi-row INSERT with bound parameters split per shard (pgshard.sql.insert_split):
renumbered statements, their parameters, format codes and Parse types; rows grouped by the
owner of their key (text and binary parameters, literals, casts)."""

from __future__ import annotations

import struct

import pytest

from pgshard.protocol.errors import ProtocolViolation
from pgshard.ring.hashing import INT4, INT8, InvalidKey
from pgshard.sql.analysis import analyze
from pgshard.sql.insert_split import group_rows, param_formats, split_bound_insert

SQL = "INSERT INTO t (id, v) VALUES ($1, $2), ($3, $4), ($5, $6)"


@pytest.mark.parametrize("formats, count, expected", [
    ((), 3, [0, 0, 0]), ((1,), 3, [1, 1, 1]), ((0, 1, 0), 3, [0, 1, 0]), ((), 0, []),
])
def test_param_formats(formats, count, expected):
    assert param_formats(formats, count) == expected


def test_param_formats_mismatch_is_a_protocol_violation():
    with pytest.raises(ProtocolViolation):
        param_formats((0, 1), 3)


def test_split_renumbers_each_shards_parameters():
    params = [b"1", b"a", b"2", b"b", b"3", b"c"]
    parts = split_bound_insert(SQL, {"s0": [0, 2], "s1": [1]}, params, (0, 1, 0, 1, 0, 1),
                               (INT8, 0, INT8, 0, INT8, 0))
    assert parts["s0"].sql == "INSERT INTO t (id, v) VALUES ($1, $2), ($3, $4)"
    assert parts["s0"].params == (b"1", b"a", b"3", b"c")
    assert parts["s0"].formats == (0, 1, 0, 1)
    assert parts["s0"].oids == (INT8, 0, INT8, 0)
    assert parts["s0"].rows == (0, 2)
    assert parts["s1"].sql == "INSERT INTO t (id, v) VALUES ($1, $2)"
    assert (parts["s1"].params, parts["s1"].formats, parts["s1"].oids) == (
        (b"2", b"b"), (0, 1), (INT8, 0))


def test_shared_parameters_and_those_outside_values_go_to_every_shard():
    sql = ("INSERT INTO t (id, v) VALUES ($1, $7), ($2, $7), ($3, upper($7)) "
           "ON CONFLICT (id) DO UPDATE SET v = $5 RETURNING id, $6::text")
    params = [b"10", b"20", b"30", b"unused", b"upd", b"ret", b"shared"]
    parts = split_bound_insert(sql, {"a": [2], "b": [0, 1]}, params)
    assert parts["a"].sql == ("INSERT INTO t (id, v) VALUES ($1, upper($2)) ON CONFLICT (id) "
                              "DO UPDATE SET v = $3 RETURNING id, CAST($4 AS text)")
    assert parts["a"].params == (b"30", b"shared", b"upd", b"ret")
    assert parts["b"].sql.startswith("INSERT INTO t (id, v) VALUES ($1, $2), ($3, $2) ON")
    assert parts["b"].params == (b"10", b"shared", b"20", b"upd", b"ret")
    assert parts["b"].formats == (0,) * 5 and parts["b"].oids == (0,) * 5


def test_literal_rows_need_no_parameters():
    parts = split_bound_insert("INSERT INTO t VALUES (1, $1), (2, 'x')", {"a": [1]}, [b"p"])
    assert parts["a"].sql == "INSERT INTO t VALUES (2, 'x')" and parts["a"].params == ()


@pytest.mark.parametrize("sql, groups, params, error", [
    ("INSERT INTO t VALUES ($1), ($2)", {"a": [0, 1]}, [b"1"], ProtocolViolation),
    ("INSERT INTO t VALUES ($1)", {"a": [3]}, [b"1"], ValueError),
    ("INSERT INTO t SELECT $1", {"a": [0]}, [b"1"], Exception),
    ("UPDATE t SET v = $1", {"a": [0]}, [b"1"], Exception),
])
def test_split_refusals(sql, groups, params, error):
    with pytest.raises(error):
        split_bound_insert(sql, groups, params)


def owner(key: bytes) -> str:
    return "even" if int(key) % 2 == 0 else "odd"


def test_group_rows_from_the_analysis_text_and_binary():
    a = analyze(SQL, {"t": "id"})
    text = group_rows(a.insert_rows, [b"1", b"x", b"2", b"y", b"3", b"z"], (), (), owner)
    assert text == {"odd": [0, 2], "even": [1]}
    binary = [struct.pack("!q", 4), b"x", struct.pack("!q", 5), b"y", struct.pack("!q", 6), b"z"]
    got = group_rows(a.insert_rows, binary, (1, 0, 1, 0, 1, 0), (INT8, 0, INT8, 0, INT8, 0), owner)
    assert got == {"even": [0, 2], "odd": [1]}


def test_group_rows_literals_casts_and_nulls():
    a = analyze("INSERT INTO t (v, id) VALUES ('a', 7), ('b', $1::int4), ('c', $2)",
                {"t": "id"})
    got = group_rows(a.insert_rows, [struct.pack("!i", 8), b"010"], (1, 0), (0, 0), owner,
                     kind="int")
    assert got == {"odd": [0], "even": [1, 2]}
    with pytest.raises(InvalidKey):
        group_rows(a.insert_rows, [None, b"1"], (), (INT4, 0), owner)
