"""Malformed and unusual message bodies: bytes in, PostgreSQL's error (SQLSTATE, severity,
message) out, never a struct.error, IndexError or UnicodeDecodeError.

The expected answers are PostgreSQL 15's, measured with the same bytes on a raw socket."""

from __future__ import annotations

import random
import struct

import pytest

from pgshard.protocol import messages as m
from pgshard.protocol.encoding import check_utf8, decode_utf8
from pgshard.protocol.errors import PgError
from pgshard.ring.hashing import INT4, INT8, TEXT, UUID, key_from_param


def i16(v: int) -> bytes:
    return struct.pack("!h", v)


def u16(v: int) -> bytes:
    return struct.pack("!H", v)


def i32(v: int) -> bytes:
    return struct.pack("!i", v)


def u32(v: int) -> bytes:
    return struct.pack("!I", v)


def body(framed: bytes) -> bytes:
    return framed[5:]


SEL = b"SELECT 1\0"
BAD = "insufficient data left in message"
UTF = 'invalid byte sequence for encoding "UTF8": '

# (decoder, body, SQLSTATE, message) — every one an ERROR: the framing is intact, so the
# session goes on to the next Sync, as PostgreSQL's does.
MALFORMED = [
    # Query
    (m.decode_query, b"SELECT 1", "08P01", "invalid string in message"),
    (m.decode_query, b"", "08P01", "invalid string in message"),
    (m.decode_query, b"SELECT 1\0x", "08P01", "invalid message format"),
    (m.decode_query, b"SELECT '\xff\xfe'\0", "22021", UTF + "0xff"),
    (m.decode_query, b"SELECT '\xe2\x28\xa1'\0", "22021", UTF + "0xe2 0x28 0xa1"),
    (m.decode_query, b"SELECT '\xed\xa0\x80'\0", "22021", UTF + "0xed 0xa0 0x80"),  # surrogate
    (m.decode_query, b"SELECT '\xc0\x80'\0", "22021", UTF + "0xc0 0x80"),         # overlong
    (m.decode_query, b"SELECT '\xe2\x82'\0", "22021", UTF + "0xe2 0x82 0x27"),
    # Parse
    (m.decode_parse, b"\xff\xfe", "08P01", "invalid string in message"),
    (m.decode_parse, b"\0" + SEL, "08P01", BAD),
    (m.decode_parse, b"\0" + SEL + b"\0", "08P01", BAD),
    (m.decode_parse, b"\0" + SEL + i16(-1), "08P01", BAD),   # 65535 OIDs announced
    (m.decode_parse, b"\0" + SEL + i16(2) + u32(23), "08P01", BAD),
    (m.decode_parse, b"\0" + SEL + i16(1) + b"\0\0\0", "08P01", BAD),
    (m.decode_parse, b"\0" + SEL + i16(0) + b"xx", "08P01", "invalid message format"),
    (m.decode_parse, b"\xff\0" + SEL + i16(0), "22021", UTF + "0xff"),
    (m.decode_parse, b"\0SELECT '\xff'\0" + i16(0), "22021", UTF + "0xff"),
    # Bind
    (m.decode_bind, b"", "08P01", "invalid string in message"),
    (m.decode_bind, b"\0", "08P01", "invalid string in message"),
    (m.decode_bind, b"\0\0", "08P01", BAD),
    (m.decode_bind, b"\0\0\xff\xff", "08P01", BAD),
    (m.decode_bind, b"\0\0" + i16(1) + i16(0), "08P01", BAD),
    (m.decode_bind, b"\0\0" + i16(2) + i16(0) + i16(0) + i16(1) + i32(1) + b"1" + i16(0),
     "08P01", "bind message has 2 parameter formats but 1 parameters"),
    (m.decode_bind, b"\0\0" + i16(0) + u16(32767) + i16(0), "08P01", BAD),
    (m.decode_bind, b"\0\0" + i16(0) + i16(-1), "08P01", BAD),
    (m.decode_bind, b"\0\0" + i16(0) + i16(1) + i32(-5) + i16(0), "08P01", BAD),
    (m.decode_bind, b"\0\0" + i16(0) + i16(1) + i32(10) + b"12" + i16(0), "08P01", BAD),
    (m.decode_bind, b"\0\0" + i16(0) + i16(1) + i32(2**31 - 1) + i16(0), "08P01", BAD),
    (m.decode_bind, b"\0\0" + i16(0) + i16(0), "08P01", BAD),
    (m.decode_bind, b"\0\0" + i16(0) + i16(0) + i16(-1), "08P01", BAD),
    (m.decode_bind, b"\0\0" + i16(0) + i16(0) + i16(2) + i16(0), "08P01", BAD),
    (m.decode_bind, b"\0\0" + i16(0) + i16(0) + i16(0) + b"zz", "08P01", "invalid message format"),
    (m.decode_bind, b"\xff\0\0" + i16(0) + i16(0) + i16(0), "22021", UTF + "0xff"),
    (m.bind_statement_name, b"", "08P01", "invalid string in message"),
    (m.bind_statement_name, b"p\0s", "08P01", "invalid string in message"),
    (m.bind_statement_name, b"\0\xfe\0", "22021", UTF + "0xfe"),
    # Describe / Close
    (m.decode_describe, b"", "08P01", "no data left in message"),
    (m.decode_describe, b"Xfoo\0", "08P01", "invalid DESCRIBE message subtype 88"),
    (m.decode_close, b"Xfoo\0", "08P01", "invalid CLOSE message subtype 88"),
    (m.decode_target, b"S", "08P01", "invalid string in message"),
    (m.decode_target, b"Sfoo", "08P01", "invalid string in message"),
    (m.decode_target, b"Pfoo\0\0", "08P01", "invalid message format"),
    (m.decode_target, b"S\x80\0", "22021", UTF + "0x80"),
    # Sync / Flush / Terminate carry nothing
    (m.check_empty, b"xx", "08P01", "invalid message format"),
]


@pytest.mark.parametrize(("decode", "data", "sqlstate", "message"), MALFORMED)
def test_malformed_body_is_an_error_not_a_crash(decode, data, sqlstate, message):
    with pytest.raises(PgError) as ei:
        decode(data)
    err = ei.value
    assert (err.sqlstate, err.message) == (sqlstate, message)
    assert err.severity == "ERROR" and not err.fatal


# Bodies that look odd but are valid: they decode, and OIDs are unsigned 32-bit.
def test_parse_oids_are_unsigned():
    pm = m.decode_parse(b"s1\0SELECT $1, $2\0" + i16(2) + u32(2**31 + 5) + u32(2**32 - 1))
    assert (pm.name, pm.sql, pm.oids) == ("s1", "SELECT $1, $2", (2**31 + 5, 2**32 - 1))
    # Re-encoding them (a statement's global Parse) gives the same bytes back.
    assert m.decode_parse(body(m.parse("g", pm.sql, pm.oids))).oids == pm.oids


def test_bind_edges_decode():
    # NULL parameter, empty parameter, one format code for all, odd result format codes
    # (the server judges those), format codes kept signed.
    data = (b"p\0s\0" + i16(1) + i16(1) + i16(3) + i32(-1) + i32(0) + i32(2) + b"\0\1"
            + i16(2) + i16(-3) + i16(7))
    b = m.decode_bind(data)
    assert (b.portal, b.statement, b.param_formats) == ("p", "s", (1,))
    assert b.params == [None, b"", b"\0\1"]
    assert b.result_formats == (-3, 7) and b.param_format(2) == 1
    assert m.decode_bind(body(m.bind(b.portal, b.statement, b.params, b.param_formats,
                                     b.result_formats))) == b
    assert m.bind_statement_name(data) == ("s", 2)
    assert m.rewrite_bind_statement(data, "pgshard_x")[5:] == data[:2] + b"pgshard_x" + data[3:]


def test_targets_and_queries_decode():
    assert m.decode_describe(b"Sname\0") == (b"S", "name")
    assert m.decode_close(b"P\0") == (b"P", "")
    assert m.decode_query("SELECT 'é'\0".encode()) == "SELECT 'é'"
    m.check_empty(b"")


def test_startup_phase_stays_fatal():
    # Before the session exists there is nothing to go on with: PostgreSQL ends it.
    for decode, data in [(m.decode_startup_params, b"user\0"),
                         (m.decode_startup_params, b"user\0\xff\0\0"),
                         (m.decode_password, b"secret"),
                         (m.decode_sasl_initial, b"SCRAM-SHA-256\0\0\0")]:
        with pytest.raises(PgError) as ei:
            decode(data)
        assert ei.value.sqlstate == "08P01" and ei.value.fatal


# Key parameters (hashing.key_from_param): Bind's own errors, before type input.
KEY_PARAMS = [
    (b"\xff\xfe", 0, INT8, "22021", UTF + "0xff"),
    (b"\xff\xfe", 0, TEXT, "22021", UTF + "0xff"),
    (b"\xff", 1, TEXT, "22021", UTF + "0xff"),
    (b"1\x002", 0, INT8, "22021", UTF + "0x00"),
    (b"\xe2\x82", 0, UUID, "22021", UTF + "0xe2 0x82"),
    (b"123", 1, INT8, "08P01", BAD),
    (b"123456789", 1, INT8, "22P03", "incorrect binary data format in bind parameter 1"),
    (b"\0" * 15, 1, UUID, "08P01", BAD),
    (b"1", 7, INT4, "22023", "unsupported format code: 7"),
    (b"1", -1, INT4, "22023", "unsupported format code: -1"),
    (b"99999999999", 0, INT4, "22003", 'value "99999999999" is out of range for type integer'),
    (b"12x", 0, INT8, "22P02", 'invalid input syntax for type bigint: "12x"'),
]


@pytest.mark.parametrize(("value", "fmt", "oid", "sqlstate", "message"), KEY_PARAMS)
def test_key_param_errors(value, fmt, oid, sqlstate, message):
    with pytest.raises(PgError) as ei:
        key_from_param(value, fmt, oid, index=0)
    assert (ei.value.sqlstate, ei.value.message) == (sqlstate, message)
    assert ei.value.severity == "ERROR"


def test_utf8_checks_agree_with_python_on_valid_text():
    for s in ["", "abc", "héllo", "日本語", "🙂", "\u07ff\u0800\uffff\U0010ffff"]:
        raw = s.encode()
        assert decode_utf8(raw) == s and check_utf8(raw) is raw


DECODERS = [m.decode_query, m.decode_parse, m.decode_bind, m.bind_statement_name,
            m.decode_target, m.decode_describe, m.decode_close, m.check_empty]


def _mutations(rng: random.Random, seed_bodies: list[bytes]):
    for _ in range(3000):
        b = bytearray(rng.choice(seed_bodies))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(5)
            if op == 0 and b:
                b[rng.randrange(len(b))] = rng.randrange(256)
            elif op == 1 and b:
                del b[rng.randrange(len(b)):]
            elif op == 2:
                b[rng.randrange(len(b) + 1):0] = rng.choice(
                    [b"\0", b"\xff", b"\xff\xff", b"\x7f\xff", b"\x80\0\0\0", b"\xc3"])
            elif op == 3 and len(b) > 2:
                i = rng.randrange(len(b) - 1)
                b[i:i + 2] = rng.choice([b"\xff\xff", b"\x80\x00", b"\0\0", b"\x7f\xff"])
            else:
                b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        yield bytes(b)


def test_mutated_bodies_fail_only_with_typed_errors():
    # Whatever the bytes, a decoder returns or raises a non-fatal PgError of the classes
    # PostgreSQL uses for them; no other exception escapes.
    seeds = [body(m.query("SELECT * FROM fz WHERE id = 1")),
             body(m.parse("s1", "SELECT $1::bigint, $2", (20, 25))),
             body(m.bind("p", "s1", [b"42", None], (0, 1), (1,))),
             body(m.describe(b"S", "s1")), body(m.close(b"P", "p")), b""]
    rng = random.Random(1313)
    for data in _mutations(rng, seeds):
        for decode in DECODERS:
            try:
                decode(data)
            except PgError as exc:
                assert exc.sqlstate in ("08P01", "22021") and not exc.fatal, (decode, data, exc)
        for fmt in (0, 1, 2):
            for oid in (INT4, INT8, TEXT, UUID, 0, 2**31 + 5):
                try:
                    key_from_param(data, fmt, oid)
                except PgError as exc:
                    assert not exc.fatal, (data, fmt, oid, exc)


def test_a_relayed_server_error_keeps_its_fields_and_gets_its_class():
    from pgshard.protocol import errors

    frame = m.error_response("23505", "duplicate key value", severity="ERROR",
                             hint="h", detail="d")
    exc = errors.from_fields(m.decode_fields(frame[5:]), "shard1: ")
    assert type(exc) is errors.lookup("23505")
    assert (exc.sqlstate, exc.message, exc.hint, exc.detail, exc.severity) == \
        ("23505", "shard1: duplicate key value", "h", "d", "ERROR")
    fatal = errors.from_fields({"C": "57P01", "M": "bye", "V": "FATAL"}, detail="x")
    assert isinstance(fatal, errors.AdminShutdown) and fatal.fatal and fatal.detail == "x"
    assert m.decode_fields(m.error_from(exc)[5:])["M"] == "shard1: duplicate key value"


def _bind_by_reader(body: bytes):
    """decode_bind as the reader's field by field calls give it (the reference)."""
    r = m._Reader(body)
    portal, stmt = r.cstr(), r.cstr()
    nf = r.u16()
    r._need(2 * nf)
    fmts = tuple(r.i16() for _ in range(nf))
    np_ = r.u16()
    if nf > 1 and nf != np_:
        raise m.MalformedMessage(f"bind message has {nf} parameter formats but {np_} parameters")
    params = []
    for _ in range(np_):
        n = r.i32()
        params.append(None if n == -1 else r.take(n))
    nr = r.u16()
    r._need(2 * nr)
    rfmts = tuple(r.i16() for _ in range(nr))
    r.end()
    return m.BindMsg(portal, stmt, fmts, params, rfmts)


def _outcome(f, body):
    try:
        return f(body)
    except Exception as exc:   # noqa: BLE001 - the class and text are what is compared
        return (type(exc), str(exc))


def test_decode_bind_reads_every_body_as_the_reader_does():
    """Every truncation and many corruptions of real Binds: the same fields or the same
    error as reading them field by field."""
    import random

    rng = random.Random(7)
    binds = [m.bind("", "s1", [b"42", None, b"\x00\x01"], (0, 0, 1), (1,)),
             m.bind("p", "", [], (), ()), m.bind("", "x", [b"-1"], (1,), (0, 1)),
             m.bind("pé", "sé", [b"a" * 300, None], (0,), ())]
    seen = 0
    for raw in binds:
        body = raw[5:]
        cases = [body[:k] for k in range(len(body) + 1)] + [body + b"\0"]
        for _ in range(300):
            b = bytearray(body)
            b[rng.randrange(len(b))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
            cases.append(bytes(b))
        for case in cases:
            want = _outcome(_bind_by_reader, case)
            assert _outcome(m.decode_bind, case) == want, case
            seen += isinstance(want, tuple)
    assert seen > 100   # errors were among them
