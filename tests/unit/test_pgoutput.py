"""pgoutput decoding: table tests of message bytes in, events out."""

from __future__ import annotations

import struct
from datetime import timedelta

import pytest

from pgshard.protocol import pgoutput as po


def u8(v): return struct.pack("!B", v)
def i16(v): return struct.pack("!h", v)
def u32(v): return struct.pack("!I", v)
def i32(v): return struct.pack("!i", v)
def u64(v): return struct.pack("!Q", v)
def i64(v): return struct.pack("!q", v)
def cstr(s): return s.encode() + b"\0"


def tup(*cols):
    out = i16(len(cols))
    for c in cols:
        if c is None:
            out += b"n"
        elif c is po.UNCHANGED_TOAST:
            out += b"u"
        elif isinstance(c, po.Binary):
            out += b"b" + i32(len(c.data)) + c.data
        else:
            raw = c.encode()
            out += b"t" + i32(len(raw)) + raw
    return out


T1 = po.PG_EPOCH + timedelta(microseconds=123_456_789)
REL = (b"R" + u32(16384) + cstr("public") + cstr("orders") + b"d" + i16(3)
       + u8(1) + cstr("id") + u32(20) + i32(-1)
       + u8(0) + cstr("note") + u32(25) + i32(-1)
       + u8(0) + cstr("amount") + u32(1700) + i32(655366))

CASES = [
    ("begin", b"B" + u64(0x1_0000_0020) + i64(123_456_789) + u32(777),
     po.Begin(0x1_0000_0020, T1, 777)),
    ("commit", b"C" + u8(0) + u64(0x16B3748) + u64(0x16B3778) + i64(123_456_789),
     po.Commit(0, 0x16B3748, 0x16B3778, T1)),
    ("origin", b"O" + u64(42) + cstr("node_a"), po.Origin(42, "node_a")),
    ("relation", REL,
     po.Relation(16384, "public", "orders", "d", (
         po.Column("id", 20, -1, True), po.Column("note", 25, -1, False),
         po.Column("amount", 1700, 655366, False)))),
    ("type", b"Y" + u32(90001) + cstr("public") + cstr("mood"),
     po.TypeInfo(90001, "public", "mood")),
    ("insert text and null", b"I" + u32(16384) + b"N" + tup("1", None, "9.50"),
     po.Insert(16384, ("1", None, "9.50"))),
    ("insert binary", b"I" + u32(16384) + b"N" + tup(po.Binary(i64(1)), "x", None),
     po.Insert(16384, (po.Binary(i64(1)), "x", None))),
    ("insert utf-8", b"I" + u32(1) + b"N" + tup("grüße", ""), po.Insert(1, ("grüße", ""))),
    ("update new only", b"U" + u32(16384) + b"N" + tup("1", po.UNCHANGED_TOAST, "2"),
     po.Update(16384, ("1", po.UNCHANGED_TOAST, "2"))),
    ("update old key", b"U" + u32(16384) + b"K" + tup("1", None, None) + b"N" + tup("2", "a", "3"),
     po.Update(16384, ("2", "a", "3"), ("1", None, None), True)),
    ("update old row", b"U" + u32(16384) + b"O" + tup("1", "a", "3") + b"N" + tup("1", "b", "3"),
     po.Update(16384, ("1", "b", "3"), ("1", "a", "3"), False)),
    ("delete key", b"D" + u32(16384) + b"K" + tup("7", None, None),
     po.Delete(16384, ("7", None, None), True)),
    ("delete full", b"D" + u32(16384) + b"O" + tup("7", "z", "1"),
     po.Delete(16384, ("7", "z", "1"), False)),
    ("truncate", b"T" + i32(2) + u8(3) + u32(16384) + u32(16390),
     po.Truncate((16384, 16390), 3)),
    ("message", b"M" + u8(1) + u64(99) + cstr("pgshard") + i32(3) + b"a\0b",
     po.Message(True, 99, "pgshard", b"a\0b")),
    ("message non-transactional", b"M" + u8(0) + u64(99) + cstr("p") + i32(0),
     po.Message(False, 99, "p", b"")),
    ("stream start", b"S" + u32(900) + u8(1), po.StreamStart(900, True)),
    ("stream stop", b"E", po.StreamStop()),
    ("stream commit", b"c" + u32(900) + u8(0) + u64(5) + u64(6) + i64(123_456_789),
     po.StreamCommit(900, 0, 5, 6, T1)),
    ("stream abort", b"A" + u32(900) + u32(901), po.StreamAbort(900, 901)),
]


@pytest.mark.parametrize("data, event", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decode(data, event):
    assert po.decode(data) == event


STREAMED = [
    ("insert", b"I" + u32(55) + u32(16384) + b"N" + tup("1"), po.Insert(16384, ("1",), 55)),
    ("delete", b"D" + u32(55) + u32(16384) + b"K" + tup("1"), po.Delete(16384, ("1",), True, 55)),
    ("update", b"U" + u32(55) + u32(16384) + b"N" + tup("1"), po.Update(16384, ("1",), xid=55)),
    ("truncate", b"T" + u32(55) + i32(1) + u8(0) + u32(16384), po.Truncate((16384,), 0, 55)),
    ("type", b"Y" + u32(55) + u32(1) + cstr("s") + cstr("t"), po.TypeInfo(1, "s", "t", 55)),
    ("message", b"M" + u32(55) + u8(1) + u64(1) + cstr("p") + i32(1) + b"x",
     po.Message(True, 1, "p", b"x", 55)),
]


@pytest.mark.parametrize("data, event", [c[1:] for c in STREAMED], ids=[c[0] for c in STREAMED])
def test_decode_in_stream_reads_the_xid(data, event):
    assert po.decode(data, in_stream=True) == event


def test_relation_key_columns_and_name():
    rel = po.decode(REL)
    assert rel.key_columns() == (0,)
    assert rel.qualified_name == "public.orders"


def test_truncate_options():
    t = po.decode(b"T" + i32(1) + u8(1) + u32(1))
    assert t.cascade and not t.restart_identity


BAD = [
    ("empty", b""),
    ("unknown tag", b"Z"),
    ("short begin", b"B" + u64(1)),
    ("trailing bytes", b"E" + b"x"),
    ("insert without N", b"I" + u32(1) + b"X" + tup("1")),
    ("update bad sub", b"U" + u32(1) + b"Q" + tup("1")),
    ("update old without new", b"U" + u32(1) + b"K" + tup("1")),
    ("delete bad sub", b"D" + u32(1) + b"N" + tup("1")),
    ("column kind", b"I" + u32(1) + b"N" + i16(1) + b"x"),
    ("column too long", b"I" + u32(1) + b"N" + i16(1) + b"t" + i32(10) + b"abc"),
    ("negative length", b"I" + u32(1) + b"N" + i16(1) + b"t" + i32(-2)),
    ("negative columns", b"I" + u32(1) + b"N" + i16(-1)),
    ("unterminated string", b"O" + u64(1) + b"abc"),
    ("bad utf-8", b"I" + u32(1) + b"N" + i16(1) + b"t" + i32(1) + b"\xff"),
    ("negative truncate count", b"T" + i32(-1) + u8(0)),
]


@pytest.mark.parametrize("data", [c[1] for c in BAD], ids=[c[0] for c in BAD])
def test_malformed_messages_are_pgoutput_errors(data):
    with pytest.raises(po.PgOutputError):
        po.decode(data)


@pytest.mark.parametrize("text, value", [("0/0", 0), ("0/16B3748", 0x16B3748),
                                         ("1/20", 0x1_0000_0020), ("FFFFFFFF/FFFFFFFF", 2**64 - 1)])
def test_lsn_text_round_trip(text, value):
    assert po.parse_lsn(text) == value
    assert po.lsn_text(value) == text


def test_decode_accepts_memoryview():
    assert po.decode(memoryview(b"E")) == po.StreamStop()
