"""PostgreSQL column values on the wire (text and binary) as Python values to sort and add.

Sort keys follow PostgreSQL's btree order for each type, with two caveats: text compares by
code point, which is PostgreSQL's order only under the C collation (the clusters pgshard
creates use `initdb --locale=C`; other collations merge ORDER BY text in code point order),
and text-format dates and timestamps must be in DateStyle ISO (the default).

Aggregate results are re-encoded in the type and format of their column: int8 for count and
sum(int2/int4), numeric for sum(int8/numeric) and avg of integers or numerics (computed
exactly like numeric_div: at least 16 significant digits, rounded half away from zero),
float4/float8 for float sums and float8 for avg of floats (float sums may differ from a
single server's in the last bits, since the addition order differs).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction

from pgshard.protocol.errors import FeatureNotSupported, InvalidTextRepresentation, PgError

BOOL, NAME, INT8, INT2, INT4, TEXT, OID = 16, 19, 20, 21, 23, 25, 26
FLOAT4, FLOAT8, UNKNOWN, BPCHAR, VARCHAR = 700, 701, 705, 1042, 1043
DATE, TIME, TIMESTAMP, TIMESTAMPTZ, NUMERIC, UUID = 1082, 1083, 1114, 1184, 1700, 2950

TEXT_TYPES = frozenset({TEXT, VARCHAR, NAME, UNKNOWN})
INT_TYPES = frozenset({INT2, INT4, INT8, OID})

_I16, _I32, _I64, _U32 = struct.Struct("!h"), struct.Struct("!i"), struct.Struct("!q"), \
    struct.Struct("!I")
_F32, _F64 = struct.Struct("!f"), struct.Struct("!d")
_NUM_HEAD = struct.Struct("!hhHh")
_NUMERIC_POS, _NUMERIC_NEG, _NUMERIC_NAN = 0x0000, 0x4000, 0xC000
_NUMERIC_PINF, _NUMERIC_NINF = 0xD000, 0xF000
_INT8_MIN, _INT8_MAX = -(1 << 63), (1 << 63) - 1
_USEC_PER_DAY = 86_400_000_000

_DATE_RE = re.compile(rb"(\d{4,})-(\d\d)-(\d\d)( BC)?")
_TS_RE = re.compile(rb"(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?"
                    rb"(?:([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?)?( BC)?")
_TIME_RE = re.compile(rb"(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?")


class NumericValueOutOfRange(PgError, code="22003"):
    pass


def unsupported(oid: int, fmt: int, what: str) -> FeatureNotSupported:
    return FeatureNotSupported(
        f"cannot {what} values of type OID {oid} ({'binary' if fmt else 'text'} format) "
        "across shards")


# -- sort keys -------------------------------------------------------------------------

def sort_key(oid: int, fmt: int) -> Callable[[bytes], object]:
    """A function from a non-NULL value to a key ordered like PostgreSQL orders the type."""
    fn = (_BINARY_KEYS if fmt else _TEXT_KEYS).get(oid)
    if fn is None:
        raise unsupported(oid, fmt, "compare")
    return fn


def _float_key(x: float):
    # PostgreSQL sorts NaN above every other value, and NaN equals NaN.
    return (1,) if x != x else (0, x)


def _numeric_key(d: Decimal):
    return (1,) if d.is_nan() else (0, d)


def _date_text(raw: bytes):
    if raw == b"infinity":
        return math.inf
    if raw == b"-infinity":
        return -math.inf
    m = _DATE_RE.fullmatch(raw)
    if not m:
        raise _datestyle(raw)
    return _days(m[1], m[2], m[3], m[4])


def _timestamp_text(raw: bytes):
    if raw == b"infinity":
        return math.inf
    if raw == b"-infinity":
        return -math.inf
    m = _TS_RE.fullmatch(raw)
    if not m:
        raise _datestyle(raw)
    usec = _days(m[1], m[2], m[3], m[12]) * _USEC_PER_DAY + (
        (int(m[4]) * 60 + int(m[5])) * 60 + int(m[6])) * 1_000_000
    if m[7]:
        usec += int(m[7].ljust(6, b"0"))
    if m[8]:
        off = (int(m[9]) * 60 + int(m[10] or 0)) * 60 + int(m[11] or 0)
        usec -= (off if m[8] == b"+" else -off) * 1_000_000
    return usec


def _time_text(raw: bytes) -> int:
    m = _TIME_RE.fullmatch(raw)
    if not m:
        raise InvalidTextRepresentation(f'cannot compare time value "{_show(raw)}"')
    return ((int(m[1]) * 60 + int(m[2])) * 60 + int(m[3])) * 1_000_000 + int(
        (m[4] or b"0").ljust(6, b"0"))


def _days(y: bytes, m: bytes, d: bytes, bc) -> int:
    year = int(y)
    return days_from_civil(1 - year if bc else year, int(m), int(d))


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 2000-01-01 of a proleptic Gregorian date (astronomical year numbering)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 730_425     # 0000-03-01 .. 2000-01-01


def _datestyle(raw: bytes) -> PgError:
    return FeatureNotSupported(
        f'cannot compare date/time value "{_show(raw)}" across shards: '
        "merging needs DateStyle ISO")


def _show(raw: bytes) -> str:
    return raw[:64].decode("utf-8", "replace")


def _utf8(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _bpchar(raw: bytes) -> str:
    # char(n) compares without its trailing blanks.
    return raw.decode("utf-8", "surrogateescape").rstrip(" ")


_TEXT_KEYS: dict[int, Callable[[bytes], object]] = {
    INT2: int, INT4: int, INT8: int, OID: int,
    FLOAT4: lambda r: _float_key(float(r)), FLOAT8: lambda r: _float_key(float(r)),
    NUMERIC: lambda r: _numeric_key(Decimal(r.decode("ascii"))),
    BOOL: lambda r: r == b"t",
    TEXT: _utf8, VARCHAR: _utf8, NAME: _utf8, UNKNOWN: _utf8, BPCHAR: _bpchar,
    DATE: _date_text, TIMESTAMP: _timestamp_text, TIMESTAMPTZ: _timestamp_text,
    TIME: _time_text,
    UUID: lambda r: bytes.fromhex(r.decode("ascii").replace("-", "")),
}
_BINARY_KEYS: dict[int, Callable[[bytes], object]] = {
    INT2: lambda r: _I16.unpack(r)[0], INT4: lambda r: _I32.unpack(r)[0],
    INT8: lambda r: _I64.unpack(r)[0], OID: lambda r: _U32.unpack(r)[0],
    FLOAT4: lambda r: _float_key(_F32.unpack(r)[0]),
    FLOAT8: lambda r: _float_key(_F64.unpack(r)[0]),
    NUMERIC: lambda r: _numeric_key(numeric_from_binary(r)),
    BOOL: lambda r: r != b"\x00",
    TEXT: _utf8, VARCHAR: _utf8, NAME: _utf8, UNKNOWN: _utf8, BPCHAR: _bpchar,
    # Binary dates and timestamps are integers whose infinities are the extreme values.
    DATE: lambda r: _I32.unpack(r)[0], TIMESTAMP: lambda r: _I64.unpack(r)[0],
    TIMESTAMPTZ: lambda r: _I64.unpack(r)[0], TIME: lambda r: _I64.unpack(r)[0],
    UUID: bytes,
}


# -- numbers ---------------------------------------------------------------------------

def number_codec(oid: int, fmt: int) -> tuple[Callable[[bytes], object], Callable[[object], bytes]]:
    """(decode, encode) for a column that aggregates add up: int8, numeric, float4, float8."""
    if oid == INT8:
        if fmt:
            return (lambda r: _I64.unpack(r)[0]), _int8_binary
        return int, lambda v: str(_int8_range(v)).encode("ascii")
    if oid == NUMERIC:
        if fmt:
            return numeric_from_binary, numeric_to_binary
        return lambda r: Decimal(r.decode("ascii")), numeric_to_text
    if oid in (FLOAT4, FLOAT8):
        single = oid == FLOAT4
        if fmt:
            st = _F32 if single else _F64
            return (lambda r: st.unpack(r)[0]), (lambda v: st.pack(v))
        return float, lambda v: float_to_text(v, single)
    raise unsupported(oid, fmt, "combine")


def _int8_range(v: int) -> int:
    if not _INT8_MIN <= v <= _INT8_MAX:
        raise NumericValueOutOfRange("bigint out of range")
    return v


def _int8_binary(v: int) -> bytes:
    return _I64.pack(_int8_range(v))


def float_to_text(x: float, single: bool = False) -> bytes:
    """float4out/float8out with the default extra_float_digits: the shortest digits that
    lie strictly inside the value's rounding interval (Ryu), closest first."""
    if x != x:
        return b"NaN"
    if math.isinf(x):
        return b"Infinity" if x > 0 else b"-Infinity"
    if single:
        x = _F32.unpack(_F32.pack(x))[0]
    sign = "-" if math.copysign(1.0, x) < 0 else ""
    if x == 0:
        return (sign + "0").encode("ascii")
    ds, e10 = _shortest(abs(x), single)
    if e10 < -4 or e10 >= (6 if single else 15):
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        out = f"{mant}e{'-' if e10 < 0 else '+'}{abs(e10):02d}"
    elif e10 >= 0:
        out = ds + "0" * (e10 + 1 - len(ds)) if len(ds) <= e10 + 1 else \
            ds[:e10 + 1] + "." + ds[e10 + 1:]
    else:
        out = "0." + "0" * (-e10 - 1) + ds
    return (sign + out).encode("ascii")


def _shortest(x: float, single: bool) -> tuple[str, int]:
    """(significant digits without trailing zeros, decimal exponent of the first) of x > 0."""
    fx = Fraction(x)
    if single:
        (bits,) = _U32.unpack(_F32.pack(x))
        prev = _F32.unpack(_U32.pack(bits - 1))[0]
        nxt = _F32.unpack(_U32.pack(bits + 1))[0]
    else:
        prev, nxt = math.nextafter(x, 0.0), math.nextafter(x, math.inf)
    lo = (Fraction(prev) + fx) / 2
    hi = (fx + Fraction(nxt)) / 2 if not math.isinf(nxt) else fx + (fx - Fraction(prev)) / 2
    if not single:
        # Python's repr is shortest too, but accepts a digit string on the interval's edge.
        r = repr(x)
        if lo < Fraction(r) < hi:
            return _digits(Decimal(r))
    for p in range(1, 18):
        mant, _, e = f"{x:.{p - 1}e}".partition("e")
        c, scale = int(mant.replace(".", "")), int(e) - (p - 1)
        inside = [v for v in (c - 1, c, c + 1)
                  if lo < Fraction(v) * Fraction(10) ** scale < hi]
        if inside:
            best = min(inside, key=lambda v: (abs(Fraction(v) * Fraction(10) ** scale - fx), v % 2))
            return _digits(Decimal(f"{best}E{scale}"))
    return _digits(Decimal(repr(x)))


def _digits(d: Decimal) -> tuple[str, int]:
    _, digits, exp = d.as_tuple()
    ds = "".join(map(str, digits))
    stripped = ds.rstrip("0")
    return stripped, exp + len(ds) - 1


def numeric_to_text(d: Decimal) -> bytes:
    if d.is_nan():
        return b"NaN"
    if d.is_infinite():
        return b"-Infinity" if d < 0 else b"Infinity"
    if d.is_zero():
        d = abs(d)
    return f"{d:f}".encode("ascii")


def numeric_from_binary(raw: bytes) -> Decimal:
    """A numeric's binary wire form (ndigits, weight, sign, dscale, base-10000 digits)."""
    if len(raw) < 8:
        raise InvalidTextRepresentation("invalid binary numeric")
    ndigits, weight, sign, dscale = _NUM_HEAD.unpack_from(raw)
    if sign == _NUMERIC_NAN:
        return Decimal("NaN")
    if sign == _NUMERIC_PINF:
        return Decimal("Infinity")
    if sign == _NUMERIC_NINF:
        return Decimal("-Infinity")
    if sign not in (_NUMERIC_POS, _NUMERIC_NEG) or ndigits < 0 or dscale < 0 \
            or len(raw) != 8 + 2 * ndigits:
        raise InvalidTextRepresentation("invalid binary numeric")
    coef = 0
    for (g,) in struct.iter_unpack("!h", raw[8:]):
        coef = coef * 10000 + g
    # value = coef * 10^e; re-expressed with exactly dscale fractional digits.
    e = 4 * (weight - ndigits + 1)
    if e + dscale >= 0:
        coef *= 10 ** (e + dscale)
    else:
        coef //= 10 ** (-dscale - e)
    return Decimal(f"{'-' if sign == _NUMERIC_NEG else ''}{coef}E-{dscale}")


def _base10000(d: Decimal) -> tuple[list[int], int, int]:
    """(base-10000 digits without leading/trailing zero groups, weight, dscale) of |d|."""
    _, digits, exp = d.as_tuple()
    dscale = max(0, -exp)
    coef = int("".join(map(str, digits)) or "0")
    if exp >= 0:
        coef, e4 = coef * 10 ** exp, 0
    else:
        pad = -exp % 4 and 4 - (-exp % 4)
        coef, e4 = coef * 10 ** pad, (exp - pad) // 4
    groups = []
    while coef:
        coef, g = divmod(coef, 10000)
        groups.append(g)
    groups.reverse()
    if not groups:
        return [], 0, dscale
    weight = len(groups) - 1 + e4
    while groups[-1] == 0:
        groups.pop()
    return groups, weight, dscale


def numeric_to_binary(d: Decimal) -> bytes:
    if d.is_nan():
        return _NUM_HEAD.pack(0, 0, _NUMERIC_NAN, 0)
    if d.is_infinite():
        return _NUM_HEAD.pack(0, 0, _NUMERIC_NINF if d < 0 else _NUMERIC_PINF, 0)
    groups, weight, dscale = _base10000(d)
    sign = _NUMERIC_NEG if groups and d.is_signed() else _NUMERIC_POS
    return _NUM_HEAD.pack(len(groups), weight, sign, dscale) + struct.pack(
        f"!{len(groups)}h", *groups)


def numeric_div(num: Decimal, den: int) -> Decimal:
    """num / den as PostgreSQL's numeric_div computes it (den > 0): select_div_scale's
    result scale, rounded half away from zero."""
    if not num.is_finite():
        return num
    g1, w1, dscale = _base10000(num)
    g2, w2, _ = _base10000(Decimal(den))
    f1, f2 = (g1[0] if g1 else 0), (g2[0] if g2 else 0)
    if not g1:
        w1 = 0
    qweight = w1 - w2 - (1 if f1 <= f2 else 0)
    rscale = min(max(16 - qweight * 4, dscale, 0), 1000)
    sign, digits, exp = num.as_tuple()
    coef = int("".join(map(str, digits)) or "0")
    shift = exp + rscale
    n, d = (coef * 10 ** shift, den) if shift >= 0 else (coef, den * 10 ** -shift)
    q, r = divmod(n, d)
    if 2 * r >= d:
        q += 1
    return Decimal(f"{'-' if sign and q else ''}{q}E-{rscale}")
