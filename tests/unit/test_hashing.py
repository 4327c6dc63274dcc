"""Canonical shard key bytes and tokens: every arrival form of a key hashes the same."""

import struct
import uuid

import mmh3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgshard.protocol.errors import FeatureNotSupported, InvalidTextRepresentation, PgError
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

U = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
U_TEXT = b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"


def test_oids_are_postgres_type_oids():
    assert (INT2, INT4, INT8, TEXT, VARCHAR, BPCHAR, UUID, NAME, UNKNOWN, UNSPECIFIED) == (
        21, 23, 20, 25, 1043, 1042, 2950, 19, 705, 0)


def test_errors_carry_sqlstates():
    assert issubclass(InvalidKey, InvalidTextRepresentation)
    assert issubclass(UnsupportedKeyType, FeatureNotSupported)
    assert InvalidKey("x").sqlstate == "22P02"
    assert UnsupportedKeyType("x").sqlstate == "0A000"


@pytest.mark.parametrize("key", [b"", b"42", b"hello", U_TEXT, "héllo".encode(), b"\x00\xff"])
def test_token_is_unsigned_mmh3_seed_0(key):
    expected = mmh3.hash(key, 0, False)
    assert token(key) == expected
    assert 0 <= token(key) < 2**32
    assert token(key) == mmh3.hash(key, 0, True) % 2**32


def test_token_of_int_is_token_of_its_text():
    assert token(b"42") == shard_key_token(42) == token(canonical_key(42))
    assert shard_key_token("42") == shard_key_token(42)
    assert shard_key_token(U) == token(U_TEXT)


@pytest.mark.parametrize(("value", "expected"), [
    (42, b"42"),
    (0, b"0"),
    (-7, b"-7"),
    (2**63 - 1, b"9223372036854775807"),
    ("hello", b"hello"),
    ("héllo", "héllo".encode()),
    ("", b""),
    (U, U_TEXT),
    (uuid.UUID("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"), U_TEXT),
    (b"raw", b"raw"),
    (bytearray(b"raw"), b"raw"),
])
def test_canonical_key(value, expected):
    assert canonical_key(value) == expected


@pytest.mark.parametrize("value", [True, False, 1.5, None, [1], object()])
def test_canonical_key_rejects(value):
    with pytest.raises(UnsupportedKeyType):
        canonical_key(value)


@pytest.mark.parametrize(("raw", "oid", "expected"), [
    (b"42", INT4, b"42"),
    (b" 042", INT4, b"42"),
    (b"42 ", INT8, b"42"),
    (b"\t\n+42\r\v\f", INT2, b"42"),
    (b"-0", INT4, b"0"),
    (b"000", INT8, b"0"),
    (b"-42", INT8, b"-42"),
    (b"1_000", INT4, b"1000"),
    (b"0x2A", INT4, b"42"),
    (b"0X_2a", INT4, b"42"),
    (b"-0o52", INT8, b"-42"),
    (b"0b101010", INT2, b"42"),
    (b"9999", INT2, b"9999"), (b"999999999", INT4, b"999999999"),   # the longest that
    (b"999999999999999999", INT8, b"999999999999999999"),           # surely fit
    (b"32767", INT2, b"32767"),
    (b"-32768", INT2, b"-32768"),
    (b"2147483647", INT4, b"2147483647"),
    (b"-2147483648", INT4, b"-2147483648"),
    (b"-0x80000000", INT4, b"-2147483648"),
    (b"9223372036854775807", INT8, b"9223372036854775807"),
    (b"-9223372036854775808", INT8, b"-9223372036854775808"),
])
def test_text_int_params(raw, oid, expected):
    assert key_from_param(raw, 0, oid) == expected


@pytest.mark.parametrize(("raw", "oid"), [
    (b"", INT4),
    (b"   ", INT4),
    (b"abc", INT4),
    (b"4 2", INT4),
    (b"42.0", INT8),
    (b"1e3", INT8),
    (b"- 42", INT4),
    (b"+-42", INT4),
    (b"_1", INT4),
    (b"1_", INT4),
    (b"1__0", INT4),
    (b"0x", INT4),
    (b"0xg", INT4),
    (b"0b2", INT4),
    (b"\xd9\xa4\xd9\xa2", INT4),  # Arabic-Indic digits are not ASCII digits
    (b"\xc2\xa042", INT4),  # no-break space is not C-locale whitespace
    (b"32768", INT2),
    (b"-32769", INT2),
    (b"2147483648", INT4),
    (b"-2147483649", INT4),
    (b"9223372036854775808", INT8),
    (b"-9223372036854775809", INT8),
    (b"99999999999999999999", INT8),
])
def test_text_int_params_invalid(raw, oid):
    with pytest.raises(InvalidKey):
        key_from_param(raw, 0, oid)


@pytest.mark.parametrize("raw", [
    b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    b"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
    b"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
    b"a0eebc999c0b4ef8bb6d6bb9bd380a11",
    b"a0ee-bc99-9c0b4ef8-bb6d6bb9-bd380a11",
    b"{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
])
def test_text_uuid_params(raw):
    assert key_from_param(raw, 0, UUID) == U_TEXT
    assert key_from_literal(raw.decode(), "uuid") == U_TEXT


@pytest.mark.parametrize("raw", [
    b"",
    b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
    b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
    b"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
    b"a0eebc9-99c0b-4ef8-bb6d-6bb9bd380a11",
    b"a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
    b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
    b" a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    b"g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    b"urn:uuid:a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
])
def test_text_uuid_params_invalid(raw):
    with pytest.raises(InvalidKey):
        key_from_param(raw, 0, UUID)


@pytest.mark.parametrize("oid", [TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN, UNSPECIFIED])
def test_text_format_text_types_pass_through(oid):
    assert key_from_param(b" 042 ", 0, oid) == b" 042 "
    assert key_from_param("héllo".encode(), 0, oid) == "héllo".encode()


@pytest.mark.parametrize(("raw", "oid", "expected"), [
    (struct.pack(">h", 42), INT2, b"42"),
    (struct.pack(">h", -32768), INT2, b"-32768"),
    (struct.pack(">i", 42), INT4, b"42"),
    (struct.pack(">i", -1), INT4, b"-1"),
    (struct.pack(">q", 42), INT8, b"42"),
    (struct.pack(">q", -(2**63)), INT8, b"-9223372036854775808"),
    (U.bytes, UUID, U_TEXT),
    (b"hello", TEXT, b"hello"),
    (b"hello", VARCHAR, b"hello"),
    (b"hello", BPCHAR, b"hello"),
    (b"hello", NAME, b"hello"),
])
def test_binary_params(raw, oid, expected):
    assert key_from_param(raw, 1, oid) == expected
    assert key_from_param(memoryview(raw), 1, oid) == expected


# As PostgreSQL's Bind: a value shorter than the type's width runs out of message
# (08P01), a longer one is not the type's binary format (22P03).
@pytest.mark.parametrize(("raw", "oid", "sqlstate"), [
    (b"\x00\x00\x00\x2a", INT2, "22P03"),
    (b"\x2a", INT2, "08P01"),
    (b"\x00\x2a", INT4, "08P01"),
    (b"\x00\x00\x00\x00\x00\x00\x00\x2a", INT4, "22P03"),
    (b"\x00\x00\x00\x2a", INT8, "08P01"),
    (b"", INT8, "08P01"),
    (U.bytes[:15], UUID, "08P01"),
    (U.bytes + b"\x00", UUID, "22P03"),
    (U_TEXT, UUID, "22P03"),
])
def test_binary_params_wrong_length(raw, oid, sqlstate):
    with pytest.raises(PgError) as ei:
        key_from_param(raw, 1, oid, index=2)
    assert ei.value.sqlstate == sqlstate and ei.value.severity == "ERROR"
    if sqlstate == "22P03":
        assert ei.value.message == "incorrect binary data format in bind parameter 3"
    else:
        assert ei.value.message == "insufficient data left in message"


@pytest.mark.parametrize(("fmt", "oid"), [
    (0, 1700),  # numeric
    (1, 1700),
    (0, 16),  # bool
    (1, 16),
    (1, 701),  # float8
    (0, 1082),  # date
    (1, 17),  # bytea
    (1, UNKNOWN),  # binary without a real type cannot be decoded
    (1, UNSPECIFIED),
])
def test_unsupported_oids_name_the_oid(fmt, oid):
    with pytest.raises(UnsupportedKeyType, match=str(oid)):
        key_from_param(b"42" if fmt == 0 else b"\x00\x00\x00\x2a", fmt, oid)


def test_bad_format_code_and_null():
    with pytest.raises(PgError, match="unsupported format code: 2") as ei:
        key_from_param(b"42", 2, INT4)
    assert ei.value.sqlstate == "22023"
    with pytest.raises(InvalidKey):
        key_from_param(None, 0, INT4)


@pytest.mark.parametrize(("text", "kind", "expected"), [
    ("42", "int", b"42"),
    (" 042 ", "int", b"42"),
    ("-0x2a", "int", b"-42"),
    ("123456789012345678901234567890", "int", b"123456789012345678901234567890"),
    ("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "uuid", U_TEXT),
    (" 042 ", "text", b" 042 "),
    (" 042 ", "auto", b" 042 "),
    ("héllo", "auto", "héllo".encode()),
])
def test_key_from_literal(text, kind, expected):
    assert key_from_literal(text, kind) == expected


def test_key_from_literal_errors():
    with pytest.raises(InvalidKey):
        key_from_literal("4x2", "int")
    with pytest.raises(InvalidKey):
        key_from_literal("not-a-uuid", "uuid")
    with pytest.raises(InvalidKey):
        key_from_literal("\ud800", "text")  # a lone surrogate has no UTF-8 form
    with pytest.raises(ValueError):
        key_from_literal("42", "float")


@pytest.mark.parametrize(("fmt_oid", "pack"), [
    (INT2, ">h"), (INT4, ">i"), (INT8, ">q"),
])
def test_int_key_same_bytes_every_way(fmt_oid, pack):
    bits = struct.calcsize(pack) * 8
    for n in (0, 1, -1, 42, 2 ** (bits - 1) - 1, -(2 ** (bits - 1))):
        forms = {
            canonical_key(n),
            key_from_literal(str(n), "int"),
            key_from_literal(str(n)),
            key_from_param(str(n).encode(), 0, fmt_oid),
            key_from_param(f"  {'+' if n >= 0 else ''}{n:0{bits // 3}d}  ".encode(), 0, fmt_oid),
            key_from_param(str(n).encode(), 0, TEXT),
            key_from_param(struct.pack(pack, n), 1, fmt_oid),
        }
        assert forms == {str(n).encode()}


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_int8_forms_agree(n):
    expected = canonical_key(n)
    assert key_from_param(struct.pack(">q", n), 1, INT8) == expected
    assert key_from_param(str(n).encode(), 0, INT8) == expected
    assert key_from_param(f" {n} ".encode(), 0, INT8) == expected
    assert key_from_param(hex(n).encode(), 0, INT8) == expected
    assert key_from_param(f"{n:_}".encode(), 0, INT8) == expected
    assert key_from_literal(str(n), "int") == expected
    assert token(expected) == shard_key_token(n)


@given(st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_int4_forms_agree(n):
    expected = canonical_key(n)
    assert key_from_param(struct.pack(">i", n), 1, INT4) == expected
    assert key_from_param(str(n).encode(), 0, INT4) == expected
    assert key_from_param(struct.pack(">q", n), 1, INT8) == expected


@given(st.uuids())
def test_uuid_forms_agree(u):
    expected = canonical_key(u)
    assert expected == str(u).encode()
    assert key_from_param(u.bytes, 1, UUID) == expected
    assert key_from_param(str(u).upper().encode(), 0, UUID) == expected
    assert key_from_param(u.hex.encode(), 0, UUID) == expected
    assert key_from_param(("{" + str(u) + "}").encode(), 0, UUID) == expected
    assert key_from_literal(str(u).upper(), "uuid") == expected
    assert key_from_param(str(u).encode(), 0, TEXT) == expected


@given(st.text())
def test_text_forms_agree(s):
    try:
        expected = s.encode()
    except UnicodeEncodeError:
        return
    if "\0" in s:
        # PostgreSQL text cannot hold a NUL: a parameter with one is refused as Bind does.
        for fmt in (0, 1):
            with pytest.raises(PgError, match="0x00") as ei:
                key_from_param(expected, fmt, TEXT)
            assert ei.value.sqlstate == "22021"
        return
    assert canonical_key(s) == expected
    assert key_from_literal(s) == expected
    assert key_from_literal(s, "text") == expected
    for oid in (TEXT, VARCHAR, BPCHAR, NAME):
        assert key_from_param(expected, 0, oid) == expected
        assert key_from_param(expected, 1, oid) == expected


@given(st.binary(max_size=24), st.sampled_from([INT2, INT4, INT8, UUID]))
def test_garbage_params_fail_cleanly(raw, oid):
    # Whatever bytes arrive, the result is canonical bytes or a typed error, never a crash.
    for fmt in (0, 1):
        try:
            key_from_param(raw, fmt, oid)
        except PgError as exc:
            # The errors PostgreSQL's Bind gives for such bytes, never a FATAL.
            assert exc.sqlstate in ("22P02", "22021", "22003", "08P01", "22P03"), exc
            assert exc.severity == "ERROR"
