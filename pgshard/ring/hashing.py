"""Shard key bytes and tokens: every form a key arrives in, reduced to one canonical hash input."""

from __future__ import annotations

import re
import uuid

import mmh3

from pgshard.protocol.encoding import check_utf8
from pgshard.protocol.errors import (
    FeatureNotSupported,
    InvalidBinaryRepresentation,
    InvalidParameterValue,
    InvalidTextRepresentation,
    MalformedMessage,
)

INT2 = 21
INT4 = 23
INT8 = 20
TEXT = 25
VARCHAR = 1043
BPCHAR = 1042
UUID = 2950
NAME = 19
UNKNOWN = 705
UNSPECIFIED = 0

_INT_BITS = {INT2: 16, INT4: 32, INT8: 64}
_INT_NAMES = {INT2: "smallint", INT4: "integer", INT8: "bigint"}
_INT_WIDTH = {INT2: 2, INT4: 4, INT8: 8}
_SAFE_DIGITS = {INT2: 4, INT4: 9, INT8: 18}
_TEXT_LIKE_TEXT_FORMAT = frozenset({TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN, UNSPECIFIED})
# In binary format unknown/unspecified carry no decodable type, so they are refused there.
_TEXT_LIKE_BINARY_FORMAT = frozenset({TEXT, VARCHAR, BPCHAR, NAME})

# PostgreSQL 16's pg_strtoint*: C-locale whitespace around an optional sign, then decimal
# (underscores between digits) or 0x/0o/0b with underscores allowed right after the prefix.
# Older servers reject the prefixed and underscored forms, so accepting them never misroutes.
_WS = rb"[ \t\n\r\v\f]*"
_INT_RE = re.compile(
    _WS
    + rb"(?P<sign>[+-]?)(?:"
    + rb"0[xX](?P<hex>(?:_?[0-9a-fA-F])+)"
    + rb"|0[oO](?P<oct>(?:_?[0-7])+)"
    + rb"|0[bB](?P<bin>(?:_?[01])+)"
    + rb"|(?P<dec>[0-9](?:_?[0-9])*)"
    + rb")"
    + _WS
)
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")


class InvalidKey(InvalidTextRepresentation):
    """A shard key value that its declared type cannot hold (SQLSTATE 22P02)."""


class KeyOutOfRange(InvalidKey, code="22003"):
    """A shard key outside its integer type's range (numeric_value_out_of_range)."""


class UnsupportedKeyType(FeatureNotSupported):
    """A shard key of a type pgshard cannot reduce to canonical bytes (SQLSTATE 0A000)."""


def token(key: bytes) -> int:
    """The ring token of canonical key bytes: unsigned 32-bit murmur3, seed 0."""
    return mmh3.hash(key, 0, False)     # (key, seed, signed): positional, no kwargs dict


def shard_key_token(value) -> int:
    """The ring token of a Python value (int, str, uuid.UUID or bytes)."""
    return token(canonical_key(value))


def canonical_key(value) -> bytes:
    """The PostgreSQL text output form of a Python value, in UTF-8."""
    # bool is an int subclass, but True would hash as b"True", never as PostgreSQL's b"t".
    if isinstance(value, bool):
        raise UnsupportedKeyType("a boolean cannot be a shard key")
    if isinstance(value, int):
        return str(value).encode("ascii")
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, uuid.UUID):
        return str(value).encode("ascii")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise UnsupportedKeyType(
        f"a value of Python type {type(value).__name__} cannot be a shard key",
        hint="Shard keys are integers, text or uuids.",
    )


def key_from_literal(text: str, kind: str = "auto") -> bytes:
    """Canonical bytes of a key written in SQL or a comment hint; kind is auto|int|uuid|text."""
    if kind in ("auto", "text"):
        return _utf8(text)
    if kind == "int":
        # A SQL literal may be wider than any column; it cannot match a row, so no range check.
        return _parse_int(_utf8(text), None)
    if kind == "uuid":
        return _parse_uuid(_utf8(text))
    raise ValueError(f"unknown shard key kind {kind!r}")


def key_from_param(value: bytes, fmt: int, type_oid: int, index: int | None = None) -> bytes:
    """Canonical bytes of a Bind parameter given its format code (0 text, 1 binary) and type
    OID (index: its 0-based position, for error messages).

    Bad values fail with the error PostgreSQL's Bind would give: text that is not UTF-8 (or
    holds a NUL) 22021, before any type input; a binary value too short 08P01 ("insufficient
    data left in message"), too long 22P03; a format code other than 0/1 22023."""
    if value is None:
        raise InvalidKey("a NULL shard key belongs to no shard")
    if not isinstance(value, bytes):
        value = bytes(value)
    if fmt == 0:
        check_utf8(value)   # PostgreSQL converts every text parameter's encoding first
        if type_oid in _TEXT_LIKE_TEXT_FORMAT:
            return value
        if type_oid in _INT_BITS:
            return _parse_int(value, type_oid)
        if type_oid == UUID:
            return _parse_uuid(value)
    elif fmt == 1:
        if type_oid in _TEXT_LIKE_BINARY_FORMAT:
            return check_utf8(value)   # textrecv checks the encoding too
        if type_oid in _INT_WIDTH:
            return str(int.from_bytes(_binary(value, _INT_WIDTH[type_oid], index), "big",
                                      signed=True)).encode("ascii")
        if type_oid == UUID:
            return str(uuid.UUID(bytes=_binary(value, 16, index))).encode("ascii")
    else:
        raise InvalidParameterValue(f"unsupported format code: {fmt}")
    raise UnsupportedKeyType(
        f"a shard key parameter of type OID {type_oid} "
        f"({'binary' if fmt else 'text'} format) is not supported",
        hint="Shard keys are smallint, integer, bigint, uuid, text, varchar, char or name.",
    )


def _binary(value: bytes, width: int, index: int | None) -> bytes:
    """A fixed-width binary value, failing as the type's recv function and Bind do."""
    if len(value) < width:
        raise MalformedMessage("insufficient data left in message")
    if len(value) > width:
        where = "" if index is None else f" {index + 1}"
        raise InvalidBinaryRepresentation(
            f"incorrect binary data format in bind parameter{where}")
    return value


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidKey("shard key is not valid UTF-8 text") from exc


def _parse_int(raw: bytes, type_oid: int | None) -> bytes:
    # Fast path for the usual case: plain digits without a leading zero are already canonical.
    n = len(raw)
    if raw.isdigit() and (raw[0] != 0x30 or n == 1) and n <= 18:
        # Up to 4/9/18 digits always fit smallint/integer/bigint: no int() to compare.
        if type_oid is None or n <= _SAFE_DIGITS[type_oid] \
                or int(raw) < 1 << (_INT_BITS[type_oid] - 1):
            return raw
    m = _INT_RE.fullmatch(raw)
    type_name = _INT_NAMES.get(type_oid, "integer")
    if m is None:
        raise InvalidKey(f'invalid input syntax for type {type_name}: "{_show(raw)}"')
    if m["hex"] is not None:
        n = int(m["hex"].replace(b"_", b""), 16)
    elif m["oct"] is not None:
        n = int(m["oct"].replace(b"_", b""), 8)
    elif m["bin"] is not None:
        n = int(m["bin"].replace(b"_", b""), 2)
    else:
        n = int(m["dec"].replace(b"_", b""))
    if m["sign"] == b"-":
        n = -n
    if type_oid is not None:
        bits = _INT_BITS[type_oid]
        if not -(1 << (bits - 1)) <= n < 1 << (bits - 1):
            raise KeyOutOfRange(f'value "{_show(raw)}" is out of range for type {type_name}')
    return str(n).encode("ascii")


def _parse_uuid(raw: bytes) -> bytes:
    # Mirrors PostgreSQL's string_to_uuid: optional braces around the whole value, 32 hex
    # digits, an optional hyphen after any group of four; nothing else, not even whitespace.
    src = raw[1:] if raw[:1] == b"{" else raw
    braces = src is not raw
    digits = bytearray()
    i = 0
    for n in range(16):
        pair = src[i:i + 2]
        if len(pair) != 2 or pair[0] not in _HEXDIGITS or pair[1] not in _HEXDIGITS:
            raise InvalidKey(f'invalid input syntax for type uuid: "{_show(raw)}"')
        digits += pair
        i += 2
        if n % 2 == 1 and n < 15 and src[i:i + 1] == b"-":
            i += 1
    if braces:
        if src[i:i + 1] != b"}":
            raise InvalidKey(f'invalid input syntax for type uuid: "{_show(raw)}"')
        i += 1
    if i != len(src):
        raise InvalidKey(f'invalid input syntax for type uuid: "{_show(raw)}"')
    h = digits.decode("ascii").lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode("ascii")


def _show(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    return text if len(text) <= 64 else text[:61] + "..."
