"""Encode and decode the few PostgreSQL messages the proxy reads or writes, no I/O."""

from __future__ import annotations

from struct import Struct

from pgshard.protocol.encoding import decode_utf8
from pgshard.protocol.errors import MalformedMessage, PgError, ProtocolViolation
from pgshard.protocol.framing import CANCEL_REQUEST, PROTOCOL_3_0, SSL_REQUEST

_I16 = Struct("!h")
_U16 = Struct("!H")
_I32 = Struct("!i")
_U32 = Struct("!I")
_HDR = Struct("!ci")
_II = Struct("!ii")


def frame(mtype: bytes, body: bytes = b"") -> bytes:
    return _HDR.pack(mtype, len(body) + 4) + body


def _cstr(s: str) -> bytes:
    return s.encode() + b"\0"


class _Reader:
    """Cursor over a message body, failing as PostgreSQL's pq_getmsg* functions do.

    A client's message that is well framed but whose body does not decode is an ERROR
    (MalformedMessage, 08P01; invalid UTF-8 is 22021): the framing is intact, so the session
    goes on. Startup packets and server messages pass error=ProtocolViolation (FATAL)."""

    __slots__ = ("data", "pos", "error")

    def __init__(self, data: bytes, error: type[ProtocolViolation] = MalformedMessage):
        self.data = data if type(data) is bytes else bytes(data)
        self.pos = 0
        self.error = error

    def cstr(self) -> str:
        # Compiled, the NUL is looked for through a C pointer, ASCII-ness in the same pass.
        data = self.data
        p = data
        n = len(data)
        start = end = self.pos
        hi = 0
        while end < n and p[end] != 0:
            hi |= p[end]
            end += 1
        if end >= n:
            raise self.error("invalid string in message")
        self.pos = end + 1
        if hi < 0x80:
            return data[start:end].decode("ascii")
        s = data[start:end]
        if self.error is not MalformedMessage:
            try:
                return s.decode()
            except UnicodeDecodeError:
                raise self.error("invalid UTF-8 in message") from None
        return decode_utf8(s)

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise self.error("insufficient data left in message")

    def i16(self) -> int:
        self._need(2)
        (v,) = _I16.unpack_from(self.data, self.pos)
        self.pos += 2
        return v

    def u16(self) -> int:
        """A count: PostgreSQL reads counts as unsigned 16-bit (so -1 is 65535)."""
        self._need(2)
        (v,) = _U16.unpack_from(self.data, self.pos)
        self.pos += 2
        return v

    def i32(self) -> int:
        self._need(4)
        (v,) = _I32.unpack_from(self.data, self.pos)
        self.pos += 4
        return v

    def u32(self) -> int:
        """An OID: unsigned 32-bit, so 2**31 and above are valid (if unknown) type OIDs."""
        self._need(4)
        (v,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return v

    def take(self, n: int) -> bytes:
        if n < 0:
            raise self.error("insufficient data left in message")
        self._need(n)
        v = self.data[self.pos:self.pos + n]
        self.pos += n
        return v

    def rest(self) -> bytes:
        v = self.data[self.pos:]
        self.pos = len(self.data)
        return v

    def end(self) -> None:
        """Nothing may follow the last field (pq_getmsgend)."""
        if self.pos != len(self.data):
            raise self.error("invalid message format")


# ---------------------------------------------------------------- startup phase

def decode_startup_params(body: bytes) -> dict[str, str]:
    """Parameters of a v3 StartupMessage (the body after the protocol code)."""
    r = _Reader(body, ProtocolViolation)
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
    body = _U16.pack(len(columns))
    for name, oid in columns:
        body += _cstr(name) + _I32.pack(0) + _I16.pack(0) + _I32.pack(oid) + _I16.pack(-1) \
            + _I32.pack(-1) + _I16.pack(0)
    return frame(b"T", body)


def data_row(values: list[bytes | None]) -> bytes:
    body = _U16.pack(len(values))
    for v in values:
        body += _I32.pack(-1) if v is None else _I32.pack(len(v)) + v
    return frame(b"D", body)


def parameter_description(oids) -> bytes:
    body = _U16.pack(len(oids))
    for oid in oids:
        body += _U32.pack(oid)
    return frame(b"t", body)


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


def warning_from(exc: PgError) -> bytes:
    """exc as a NoticeResponse of severity WARNING (the statement still succeeds)."""
    return error_response(exc.sqlstate, exc.message, severity="WARNING", hint=exc.hint,
                          detail=exc.detail, notice=True)


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
    r = _Reader(body, ProtocolViolation)
    return r.cstr(), r.cstr()


def decode_auth(body: bytes) -> tuple[int, bytes]:
    r = _Reader(body, ProtocolViolation)
    return r.i32(), r.rest()


def decode_sasl_mechanisms(data: bytes) -> list[str]:
    return [m.decode(errors="replace") for m in data.split(b"\0") if m]


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
    r = _Reader(body, ProtocolViolation)
    mech = r.cstr()
    n = r.i32()
    return mech, (b"" if n < 0 else r.take(n))


def decode_password(body: bytes) -> str:
    return _Reader(body, ProtocolViolation).cstr()


def parse(name: str, sql: str, oids: tuple[int, ...] = ()) -> bytes:
    # OIDs are unsigned 32-bit; counts are unsigned 16-bit, as PostgreSQL reads them.
    body = _cstr(name) + _cstr(sql) + _U16.pack(len(oids))
    body += b"".join(_U32.pack(o & 0xFFFFFFFF) for o in oids)
    return frame(b"P", body)


def bind(portal: str, statement: str, params: list[bytes | None] = (),
         param_formats: tuple[int, ...] = (), result_formats: tuple[int, ...] = ()) -> bytes:
    body = _cstr(portal) + _cstr(statement) + _U16.pack(len(param_formats))
    body += b"".join(_I16.pack(f) for f in param_formats)
    body += _U16.pack(len(params))
    for p in params:
        body += _I32.pack(-1) if p is None else _I32.pack(len(p)) + p
    body += _U16.pack(len(result_formats)) + b"".join(_I16.pack(f) for f in result_formats)
    return frame(b"B", body)


def describe(kind: bytes, name: str) -> bytes:
    return frame(b"D", kind + _cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return frame(b"E", _cstr(portal) + _I32.pack(max_rows))


def close(kind: bytes, name: str) -> bytes:
    return frame(b"C", kind + _cstr(name))


def check_empty(body: bytes) -> None:
    """Sync, Flush and Terminate carry no body; PostgreSQL refuses one that does."""
    if body:
        raise MalformedMessage("invalid message format")


def query_text(raw: bytes) -> str:
    """The text of a whole Query message (raw: header included): an ASCII text with its one
    terminator last is sliced straight out; anything else is read as decode_query reads it."""
    end = raw.find(b"\0", 5)
    if end == len(raw) - 1:
        s = raw[5:end]
        if s.isascii():
            return s.decode("ascii")
    return decode_query(raw[5:])


def decode_query(body: bytes) -> str:
    r = _Reader(body)
    sql = r.cstr()
    r.end()
    return sql


class _Fields:
    """Equality and repr by the fields in __slots__ (what @dataclass would give, with an
    __init__ compiled with the module instead of one generated at run time)."""

    __slots__ = ()
    __hash__ = None

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({fields})"


class ParseMsg(_Fields):
    """A Parse: the statement's name, its text and its parameter type OIDs."""

    __slots__ = ("name", "sql", "oids")

    def __init__(self, name: str, sql: str, oids: tuple[int, ...]):
        self.name = name
        self.sql = sql
        self.oids = oids


def decode_parse(body: bytes) -> ParseMsg:
    r = _Reader(body)
    name, sql = r.cstr(), r.cstr()
    n = r.u16()
    r._need(4 * n)
    oids = tuple([r.u32() for _ in range(n)]) if n else ()
    r.end()
    return ParseMsg(name, sql, oids)


class BindMsg(_Fields):
    """A Bind: portal, statement, parameter formats and values, result formats."""

    __slots__ = ("portal", "statement", "param_formats", "params", "result_formats")

    def __init__(self, portal: str, statement: str, param_formats: tuple[int, ...],
                 params: list[bytes | None], result_formats: tuple[int, ...]):
        self.portal = portal
        self.statement = statement
        self.param_formats = param_formats
        self.params = params
        self.result_formats = result_formats

    def param_format(self, i: int) -> int:
        f = self.param_formats
        if not f:
            return 0
        return f[0] if len(f) == 1 else f[i]


def decode_bind(body: bytes) -> BindMsg:
    """The Bind's fields, checked in PostgreSQL's order (exec_bind_message); the parameter
    count against the statement's is left to the server.

    After the two names the fields are read byte by byte (`p[i]`: compiled, a C pointer into
    the body, so no call per field; uncompiled, plain indexing)."""
    if type(body) is not bytes:
        body = bytes(body)
    r = _Reader(body)
    portal, stmt = r.cstr(), r.cstr()
    p = body
    pos = r.pos
    n = len(body)
    fmts = _int16s(p, pos, n)
    nf = len(fmts)
    pos += 2 + 2 * nf
    if pos + 2 > n:
        raise MalformedMessage(_SHORT)
    np_ = (p[pos] << 8) + p[pos + 1]
    pos += 2
    if nf > 1 and nf != np_:
        raise MalformedMessage(f"bind message has {nf} parameter formats but {np_} parameters")
    params: list[bytes | None] = []
    for _ in range(np_):
        if pos + 4 > n:
            raise MalformedMessage(_SHORT)
        size = ((p[pos] ^ 0x80) - 0x80) * 16777216 + (p[pos + 1] << 16) \
            + (p[pos + 2] << 8) + p[pos + 3]
        pos += 4
        if size == -1:
            params.append(None)
            continue
        if size < 0 or pos + size > n:
            raise MalformedMessage(_SHORT)
        params.append(body[pos:pos + size])
        pos += size
    rfmts = _int16s(p, pos, n)
    if pos + 2 + 2 * len(rfmts) != n:
        raise MalformedMessage("invalid message format")
    return BindMsg(portal, stmt, fmts, params, rfmts)


_SHORT = "insufficient data left in message"


def _int16s(p, pos: int, n: int) -> tuple[int, ...]:
    """The counted array of signed big-endian 16-bit integers at p[pos:] (a 16-bit count,
    then that many), within a body of n bytes: its fields take 2 + 2 * len(result) bytes."""
    if pos + 2 > n:
        raise MalformedMessage(_SHORT)
    count = (p[pos] << 8) + p[pos + 1]
    pos += 2
    if pos + 2 * count > n:
        raise MalformedMessage(_SHORT)
    if count == 0:
        return ()
    return tuple([((p[pos + 2 * i] ^ 0x80) - 0x80) * 256 + p[pos + 2 * i + 1]
                  for i in range(count)])


def decode_cstr(body: bytes) -> str:
    """The first string of a body: the portal an Execute or Bind names."""
    return _Reader(body).cstr()


def bind_statement_name(body: bytes) -> tuple[str, int]:
    """(statement name, offset where it starts) without decoding the parameters."""
    if type(body) is not bytes:
        body = bytes(body)
    # The common case, ASCII names: one pass (compiled: through a C pointer), no reader.
    p = body
    n = len(body)
    a = 0
    hi = 0
    while a < n and p[a] != 0:
        hi |= p[a]
        a += 1
    e = a + 1
    while e < n and p[e] != 0:
        hi |= p[e]
        e += 1
    if e < n and hi < 0x80:
        return body[a + 1:e].decode("ascii"), a + 1
    r = _Reader(body)
    r.cstr()   # the portal
    at = r.pos
    return r.cstr(), at


def rewrite_bind_statement(body: bytes, new_name: str) -> bytes:
    """A Bind message (framed) naming another prepared statement, parameters untouched."""
    old, at = bind_statement_name(body)
    return frame(b"B", body[:at] + new_name.encode() + body[at + len(old.encode()):])


def renamed_bind(raw: bytes, at: int, old: str, new_name: str) -> bytes:
    """rewrite_bind_statement of a framed Bind whose statement name old starts at body
    offset at (bind_statement_name's answer): no second scan."""
    start = 5 + at
    old_len = len(old) if old.isascii() else len(old.encode())
    new = new_name.encode()
    # One join: the header (its length counts itself, not the type byte), the portal, the
    # new name, the rest.
    return b"".join((b"B", _I32.pack(len(raw) - 1 - old_len + len(new)), raw[5:start], new,
                     raw[start + old_len:]))


def decode_target(body: bytes, what: str = "DESCRIBE/CLOSE") -> tuple[bytes, str]:
    """(kind b'S'|b'P', name) of a Describe or Close message (what names it in errors)."""
    if not body:
        raise MalformedMessage("no data left in message")
    kind = body[0:1]
    if kind not in (b"S", b"P"):
        raise MalformedMessage(f"invalid {what} message subtype {body[0]}")
    r = _Reader(body)
    r.pos = 1
    name = r.cstr()
    r.end()
    return kind, name


def decode_describe(body: bytes) -> tuple[bytes, str]:
    return decode_target(body, "DESCRIBE")


def decode_close(body: bytes) -> tuple[bytes, str]:
    return decode_target(body, "CLOSE")


def decode_row_description(body: bytes) -> list[tuple[str, int, int]]:
    """[(column name, type oid, format code)] of a RowDescription."""
    r = _Reader(body, ProtocolViolation)
    cols = []
    for _ in range(r.u16()):
        name = r.cstr()
        r.take(6)
        oid = r.u32()
        r.take(6)
        cols.append((name, oid, r.i16()))
    return cols


def decode_backend_key(body: bytes) -> tuple[int, int]:
    if len(body) < 8:
        raise ProtocolViolation("invalid BackendKeyData")
    return _II.unpack_from(body)
