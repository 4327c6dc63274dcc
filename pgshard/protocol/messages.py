"""Encode and decode the few PostgreSQL messages the proxy reads or writes, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from struct import Struct

from pgshard.protocol.errors import PgError, ProtocolViolation
from pgshard.protocol.framing import CANCEL_REQUEST, PROTOCOL_3_0, SSL_REQUEST

_I16 = Struct("!h")
_I32 = Struct("!i")
_HDR = Struct("!ci")
_II = Struct("!ii")


def frame(mtype: bytes, body: bytes = b"") -> bytes:
    return _HDR.pack(mtype, len(body) + 4) + body


def _cstr(s: str) -> bytes:
    return s.encode() + b"\0"


class _Reader:
    """Cursor over a message body; any overrun is the peer's protocol violation."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def cstr(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolViolation("invalid string in message")
        s = self.data[self.pos:end]
        self.pos = end + 1
        try:
            return s.decode()
        except UnicodeDecodeError as exc:
            raise ProtocolViolation("invalid UTF-8 in message") from exc

    def i16(self) -> int:
        if self.pos + 2 > len(self.data):
            raise ProtocolViolation("message too short")
        (v,) = _I16.unpack_from(self.data, self.pos)
        self.pos += 2
        return v

    def i32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise ProtocolViolation("message too short")
        (v,) = _I32.unpack_from(self.data, self.pos)
        self.pos += 4
        return v

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolViolation("message too short")
        v = self.data[self.pos:self.pos + n]
        self.pos += n
        return v

    def rest(self) -> bytes:
        v = self.data[self.pos:]
        self.pos = len(self.data)
        return v


# ---------------------------------------------------------------- startup phase

def decode_startup_params(body: bytes) -> dict[str, str]:
    """Parameters of a v3 StartupMessage (the body after the protocol code)."""
    r = _Reader(body)
    params: dict[str, str] = {}
    while True:
        key = r.cstr()
        if not key:
            break
        params[key] = r.cstr()
    if "user" not in params:
        raise ProtocolViolation("no PostgreSQL user name specified in startup packet",
                                sqlstate="28000")
    return params


def startup_message(params: dict[str, str]) -> bytes:
    body = _I32.pack(PROTOCOL_3_0)
    for k, v in params.items():
        body += _cstr(k) + _cstr(v)
    body += b"\0"
    return _I32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return _II.pack(8, SSL_REQUEST)


def cancel_request(pid: int, key: int) -> bytes:
    return _I32.pack(16) + _I32.pack(CANCEL_REQUEST) + _II.pack(pid, key)


def decode_cancel(body: bytes) -> tuple[int, int]:
    if len(body) != 8:
        raise ProtocolViolation("invalid cancel request")
    return _II.unpack(body)


# ---------------------------------------------------------------- backend → client

def auth_ok() -> bytes:
    return frame(b"R", _I32.pack(0))


def auth_cleartext() -> bytes:
    return frame(b"R", _I32.pack(3))


def auth_md5(salt: bytes) -> bytes:
    return frame(b"R", _I32.pack(5) + salt)


def auth_sasl(mechanisms: list[str]) -> bytes:
    return frame(b"R", _I32.pack(10) + b"".join(_cstr(m) for m in mechanisms) + b"\0")


def auth_sasl_continue(data: bytes) -> bytes:
    return frame(b"R", _I32.pack(11) + data)


def auth_sasl_final(data: bytes) -> bytes:
    return frame(b"R", _I32.pack(12) + data)


def parameter_status(name: str, value: str) -> bytes:
    return frame(b"S", _cstr(name) + _cstr(value))


def backend_key_data(pid: int, key: int) -> bytes:
    return frame(b"K", _II.pack(pid, key))


def ready_for_query(status: bytes) -> bytes:
    return frame(b"Z", status)


def command_complete(tag: str) -> bytes:
    return frame(b"C", _cstr(tag))


def row_description(columns: list[tuple[str, int]]) -> bytes:
    """A RowDescription of text-format columns given as (name, type oid)."""
    body = _I16.pack(len(columns))
    for name, oid in columns:
        body += _cstr(name) + _I32.pack(0) + _I16.pack(0) + _I32.pack(oid) + _I16.pack(-1) \
            + _I32.pack(-1) + _I16.pack(0)
    return frame(b"T", body)


def data_row(values: list[bytes | None]) -> bytes:
    body = _I16.pack(len(values))
    for v in values:
        body += _I32.pack(-1) if v is None else _I32.pack(len(v)) + v
    return frame(b"D", body)


PARSE_COMPLETE = frame(b"1")
BIND_COMPLETE = frame(b"2")
CLOSE_COMPLETE = frame(b"3")
NO_DATA = frame(b"n")
EMPTY_QUERY = frame(b"I")
SYNC = frame(b"S")
FLUSH = frame(b"H")
TERMINATE = frame(b"X")


def error_response(sqlstate: str, message: str, *, severity: str = "ERROR",
                   hint: str | None = None, detail: str | None = None,
                   notice: bool = False) -> bytes:
    body = b"S" + _cstr(severity) + b"V" + _cstr(severity) + b"C" + _cstr(sqlstate)
    body += b"M" + _cstr(message)
    if detail:
        body += b"D" + _cstr(detail)
    if hint:
        body += b"H" + _cstr(hint)
    return frame(b"N" if notice else b"E", body + b"\0")


def error_from(exc: PgError) -> bytes:
    return error_response(exc.sqlstate, exc.message, severity=exc.severity,
                          hint=exc.hint, detail=exc.detail)


def decode_fields(body: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse keyed by their one-letter code."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        end = body.find(b"\0", pos + 1)
        if end < 0:
            break
        fields[code] = body[pos + 1:end].decode(errors="replace")
        pos = end + 1
    return fields


def error_to_exception(body: bytes) -> PgError:
    f = decode_fields(body)
    return PgError(f.get("M", "unknown error"), sqlstate=f.get("C", "XX000"),
                   severity=f.get("V") or f.get("S") or "ERROR", hint=f.get("H"),
                   detail=f.get("D"))


def decode_parameter_status(body: bytes) -> tuple[str, str]:
    r = _Reader(body)
    return r.cstr(), r.cstr()


def decode_auth(body: bytes) -> tuple[int, bytes]:
    r = _Reader(body)
    return r.i32(), r.rest()


def decode_sasl_mechanisms(data: bytes) -> list[str]:
    return [m.decode() for m in data.split(b"\0") if m]


# ---------------------------------------------------------------- client → backend

def query(sql: str) -> bytes:
    return frame(b"Q", _cstr(sql))


def password_message(data: bytes) -> bytes:
    return frame(b"p", data)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return frame(b"p", _cstr(mechanism) + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return frame(b"p", data)


def decode_sasl_initial(body: bytes) -> tuple[str, bytes]:
    r = _Reader(body)
    mech = r.cstr()
    n = r.i32()
    return mech, (b"" if n < 0 else r.take(n))


def decode_password(body: bytes) -> str:
    return _Reader(body).cstr()


def parse(name: str, sql: str, oids: tuple[int, ...] = ()) -> bytes:
    body = _cstr(name) + _cstr(sql) + _I16.pack(len(oids))
    body += b"".join(_I32.pack(o) for o in oids)
    return frame(b"P", body)


def bind(portal: str, statement: str, params: list[bytes | None] = (),
         param_formats: tuple[int, ...] = (), result_formats: tuple[int, ...] = ()) -> bytes:
    body = _cstr(portal) + _cstr(statement) + _I16.pack(len(param_formats))
    body += b"".join(_I16.pack(f) for f in param_formats)
    body += _I16.pack(len(params))
    for p in params:
        body += _I32.pack(-1) if p is None else _I32.pack(len(p)) + p
    body += _I16.pack(len(result_formats)) + b"".join(_I16.pack(f) for f in result_formats)
    return frame(b"B", body)


def describe(kind: bytes, name: str) -> bytes:
    return frame(b"D", kind + _cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return frame(b"E", _cstr(portal) + _I32.pack(max_rows))


def close(kind: bytes, name: str) -> bytes:
    return frame(b"C", kind + _cstr(name))


def decode_query(body: bytes) -> str:
    return _Reader(body).cstr()


@dataclass(slots=True)
class ParseMsg:
    name: str
    sql: str
    oids: tuple[int, ...]


def decode_parse(body: bytes) -> ParseMsg:
    r = _Reader(body)
    name, sql = r.cstr(), r.cstr()
    n = r.i16()
    if n < 0:
        raise ProtocolViolation("invalid parameter count in Parse")
    oids = tuple(r.i32() & 0xFFFFFFFF for _ in range(n))
    return ParseMsg(name, sql, oids)


@dataclass(slots=True)
class BindMsg:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: list[bytes | None]
    result_formats: tuple[int, ...]

    def param_format(self, i: int) -> int:
        f = self.param_formats
        if not f:
            return 0
        return f[0] if len(f) == 1 else f[i]


def decode_bind(body: bytes) -> BindMsg:
    r = _Reader(body)
    portal, stmt = r.cstr(), r.cstr()
    nf = r.i16()
    if nf < 0:
        raise ProtocolViolation("invalid format count in Bind")
    fmts = tuple(r.i16() for _ in range(nf))
    np_ = r.i16()
    if np_ < 0 or (nf > 1 and nf != np_):
        raise ProtocolViolation("bind message has mismatched parameter format count")
    params: list[bytes | None] = []
    for _ in range(np_):
        n = r.i32()
        params.append(None if n == -1 else r.take(n))
    nr = r.i16()
    rfmts = tuple(r.i16() for _ in range(max(nr, 0)))
    return BindMsg(portal, stmt, fmts, params, rfmts)


def bind_statement_name(body: bytes) -> tuple[str, int]:
    """(statement name, offset where it starts) without decoding the parameters."""
    start = body.find(b"\0")
    end = body.find(b"\0", start + 1)
    if start < 0 or end < 0:
        raise ProtocolViolation("invalid Bind message")
    return body[start + 1:end].decode(errors="replace"), start + 1


def rewrite_bind_statement(body: bytes, new_name: str) -> bytes:
    """A Bind message (framed) naming another prepared statement, parameters untouched."""
    old, at = bind_statement_name(body)
    nb = body[:at] + new_name.encode() + body[at + len(old.encode()):]
    return frame(b"B", nb)


def decode_target(body: bytes) -> tuple[bytes, str]:
    """(kind b'S'|b'P', name) of a Describe or Close message."""
    if not body or body[0:1] not in (b"S", b"P"):
        raise ProtocolViolation("invalid Describe/Close target")
    return body[0:1], _Reader(body[1:]).cstr()


def decode_row_description(body: bytes) -> list[tuple[str, int, int]]:
    """[(column name, type oid, format code)] of a RowDescription."""
    r = _Reader(body)
    cols = []
    for _ in range(r.i16()):
        name = r.cstr()
        r.take(6)
        oid = r.i32() & 0xFFFFFFFF
        r.take(6)
        cols.append((name, oid, r.i16()))
    return cols


def decode_backend_key(body: bytes) -> tuple[int, int]:
    if len(body) < 8:
        raise ProtocolViolation("invalid BackendKeyData")
    return _II.unpack_from(body)
