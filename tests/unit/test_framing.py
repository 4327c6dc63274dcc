"""Framing tables: bytes in → frames out, split and coalesced reads, bad input."""

from __future__ import annotations

import ast
import pathlib
import struct

import pytest

from pgshard.protocol import messages as m
from pgshard.protocol.errors import ProtocolViolation
from pgshard.protocol.framing import (
    BACKEND_TYPES,
    CANCEL_REQUEST,
    FRONTEND_TYPES,
    PROTOCOL_3_0,
    SSL_REQUEST,
    FrameBuffer,
)

Q1 = m.query("SELECT 1")
Q2 = m.query("SELECT 2")
SYNC = m.SYNC


def frames(chunks, allowed=FRONTEND_TYPES, max_size=1 << 20):
    fb = FrameBuffer(max_size=max_size, allowed=allowed)
    out = []
    for c in chunks:
        fb.feed(c)
        while (msg := fb.next_frame()) is not None:
            out.append(msg)
    return out, len(fb)


@pytest.mark.parametrize("chunks, expected", [
    ([Q1], [Q1]),
    ([Q1 + Q2 + SYNC], [Q1, Q2, SYNC]),                       # coalesced
    ([Q1[:1], Q1[1:3], Q1[3:]], [Q1]),                         # split header
    ([Q1[:7], Q1[7:] + Q2[:2], Q2[2:]], [Q1, Q2]),             # split across messages
    ([bytes([b]) for b in Q1 + SYNC], [Q1, SYNC]),             # byte by byte
    ([b""], []),
])
def test_split_and_coalesced(chunks, expected):
    out, rest = frames(chunks)
    assert [raw for _, raw in out] == expected
    assert rest == 0


@pytest.mark.parametrize("data, match", [
    (b"Q" + struct.pack("!i", 3), "invalid message length"),
    (b"Q" + struct.pack("!i", -1), "invalid message length"),
    (b"Q" + struct.pack("!i", (1 << 20) + 1), "exceeds max_message_size"),
    (b"z" + struct.pack("!i", 4), "invalid message type"),
    (b"\x00\x00\x00\x00\x08", "invalid message type"),
])
def test_bad_frames(data, match):
    with pytest.raises(ProtocolViolation, match=match) as ei:
        frames([data])
    assert ei.value.sqlstate == "08P01"


def test_oversize_is_detected_from_the_header_alone():
    fb = FrameBuffer(max_size=100, allowed=FRONTEND_TYPES)
    fb.feed(b"Q" + struct.pack("!i", 101))   # body never sent
    with pytest.raises(ProtocolViolation):
        fb.next_frame()


@pytest.mark.parametrize("packet, code", [
    (struct.pack("!ii", 8, SSL_REQUEST), SSL_REQUEST),
    (struct.pack("!iiii", 16, CANCEL_REQUEST, 7, 9), CANCEL_REQUEST),
    (m.startup_message({"user": "u", "database": "d"}), PROTOCOL_3_0),
])
def test_startup_packets(packet, code):
    fb = FrameBuffer()
    for i in range(len(packet)):           # byte by byte
        assert fb.next_startup() is None
        fb.feed(packet[i:i + 1])
    got, body = fb.next_startup()
    assert got == code
    if code == PROTOCOL_3_0:
        assert m.decode_startup_params(body) == {"user": "u", "database": "d"}
    if code == CANCEL_REQUEST:
        assert m.decode_cancel(body) == (7, 9)


@pytest.mark.parametrize("length", [0, 4, 7, 10_001, -5])
def test_bad_startup_length(length):
    fb = FrameBuffer()
    fb.feed(struct.pack("!i", length) + b"\0" * 8)
    with pytest.raises(ProtocolViolation, match="startup packet length"):
        fb.next_startup()


def test_startup_without_user():
    body = struct.pack("!i", PROTOCOL_3_0)[4:] + b"database\0d\0\0"
    with pytest.raises(ProtocolViolation) as ei:
        m.decode_startup_params(body)
    assert ei.value.sqlstate == "28000"


def test_scan_returns_offsets_without_copying_bodies():
    fb = FrameBuffer(allowed=BACKEND_TYPES)
    rows = [m.data_row([b"1", None, b"abc"]) for _ in range(3)]
    data = m.row_description([("a", 23)]) + b"".join(rows) + m.command_complete("SELECT 3") \
        + m.ready_for_query(b"I")
    fb.feed(data[:-3])
    frames_, view = fb.scan()
    assert [chr(t) for t, _, _ in frames_] == ["T", "D", "D", "D", "C"]
    fb.feed(data[-3:])
    frames2, view2 = fb.scan()
    assert [chr(t) for t, _, _ in frames2] == ["Z"] and bytes(view2) == m.ready_for_query(b"I")


@pytest.mark.parametrize("body", [b"", b"\x00", b"name", b"n\x00sql"])
def test_truncated_parse_is_a_protocol_violation(body):
    with pytest.raises(ProtocolViolation):
        m.decode_parse(body)


def test_bind_round_trip_and_rewrite():
    raw = m.bind("", "stmt1", [b"42", None, b"\x00\x01"], (0, 0, 1), (1,))
    b = m.decode_bind(raw[5:])
    assert (b.portal, b.statement, b.params, b.param_formats, b.result_formats) == \
        ("", "stmt1", [b"42", None, b"\x00\x01"], (0, 0, 1), (1,))
    assert b.param_format(2) == 1
    re = m.decode_bind(m.rewrite_bind_statement(raw[5:], "pgshard_abc")[5:])
    assert re.statement == "pgshard_abc" and re.params == b.params


def test_error_response_fields():
    raw = m.error_response("0A000", "nope", hint="try this", detail="because")
    f = m.decode_fields(raw[5:])
    assert f["C"] == "0A000" and f["M"] == "nope" and f["H"] == "try this" and f["D"] == "because"


def test_protocol_package_does_no_io():
    """pgshard/protocol is sans-IO: no asyncio, socket or ssl imports anywhere in it."""
    pkg = pathlib.Path(__file__).parents[2] / "pgshard" / "protocol"
    banned = {"asyncio", "socket", "ssl", "selectors"}
    for path in pkg.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            assert not banned.intersection(names), f"{path.name} imports {names}"


def test_in_place_and_buffered_paths_agree():
    """Any split of a stream gives the same frames, whether kept in place or copied."""
    import random

    stream = b"".join([m.query("SELECT 1"), m.parse("s", "SELECT $1", (23,)),
                       m.bind("", "s", [b"42"]), m.execute(), m.SYNC] * 20)
    rnd = random.Random(7)
    for _ in range(200):
        cuts = sorted(rnd.sample(range(1, len(stream)), rnd.randint(0, 12)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        got, rest = frames(chunks)
        assert b"".join(raw for _, raw in got) == stream and rest == 0
        fb = FrameBuffer(allowed=BACKEND_TYPES | FRONTEND_TYPES)
        out = b""
        for c in chunks:
            fb.feed(c)
            fr, data = fb.scan()
            out += bytes(data)[:fr[-1][2]] if fr else b""
        assert out == stream


@pytest.mark.parametrize("portal,name,new", [
    ("", "stmt1", "pgshard_abc"), ("p1", "", "pgshard_x"), ("pé", "naïve", "pgshard_y"),
    ("", "P0_1", "pgshard_0123456789abcdef"),
])
def test_renamed_bind_is_rewrite_without_a_second_scan(portal, name, new):
    raw = m.bind(portal, name, [b"1", None], (0,), (0,))
    old, at = m.bind_statement_name(raw[5:])
    assert old == name
    assert m.renamed_bind(raw, at, old, new) == m.rewrite_bind_statement(raw[5:], new)
    back = m.decode_bind(m.renamed_bind(raw, at, old, new)[5:])
    assert (back.portal, back.statement, back.params) == (portal, new, [b"1", None])


@pytest.mark.parametrize("body", [
    b"SELECT 1\0", b"\0", "SELECT 'é'\0".encode(), b"SELECT 1\0junk\0", b"SELECT 1",
    b"SELECT \xff\0", b"SELECT 1\0\0",
])
def test_query_text_reads_what_decode_query_reads(body):
    raw = b"Q" + (len(body) + 4).to_bytes(4, "big") + body
    try:
        want = m.decode_query(body)
    except Exception as exc:
        with pytest.raises(type(exc)):
            m.query_text(raw)
    else:
        assert m.query_text(raw) == want
