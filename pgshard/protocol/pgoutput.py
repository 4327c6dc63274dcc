"""Decoding of pgoutput, PostgreSQL's logical replication output, one message at a time, no I/O.

Each message is what one row of pg_logical_slot_get_binary_changes(...) carries in its data
column, or the body of an XLogData frame on the replication protocol: a one-byte tag and its
fields (PostgreSQL's "Logical Replication Message Formats"). Protocol version 1 is the
default; in_stream=True reads the transaction id that version 2 puts in front of the
messages of a streamed (in-progress) transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from struct import Struct

from pgshard.protocol.errors import ProtocolViolation

_U8 = Struct("!B")
_I16 = Struct("!h")
_U32 = Struct("!I")
_I32 = Struct("!i")
_U64 = Struct("!Q")
_I64 = Struct("!q")

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

# Replica identity as pg_class.relreplident spells it.
IDENTITY_DEFAULT, IDENTITY_NOTHING, IDENTITY_FULL, IDENTITY_INDEX = "d", "n", "f", "i"
# Truncate options.
TRUNCATE_CASCADE, TRUNCATE_RESTART_IDENTITY = 1, 2


class PgOutputError(ProtocolViolation):
    """A pgoutput message that does not decode (a short body, an unknown tag)."""


# -- column values ------------------------------------------------------------------------

class _Unchanged:
    """An unchanged TOASTed value: pgoutput does not send it; the old row's value stands."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST = _Unchanged()


@dataclass(frozen=True, slots=True)
class Binary:
    """A column value in the type's binary send format (the publication's binary option)."""

    data: bytes


# A tuple column: None (NULL), UNCHANGED_TOAST, str (text format) or Binary.
Value = None | _Unchanged | str | Binary


# -- messages -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]
    xid: int | None = None

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"

    def key_columns(self) -> tuple[int, ...]:
        """Positions of the replica identity's columns (the primary key by default)."""
        return tuple(i for i, c in enumerate(self.columns) if c.is_key)


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int
    namespace: str
    name: str
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: tuple[Value, ...]
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Update:
    """old is the old key ('K': replica identity columns, others None) or the whole old row
    ('O': REPLICA IDENTITY FULL); None when the key did not change and identity is default."""

    relation_oid: int
    new: tuple[Value, ...]
    old: tuple[Value, ...] | None = None
    old_is_key: bool = False
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old: tuple[Value, ...]
    old_is_key: bool = True
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_oids: tuple[int, ...]
    options: int = 0
    xid: int | None = None

    @property
    def cascade(self) -> bool:
        return bool(self.options & TRUNCATE_CASCADE)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & TRUNCATE_RESTART_IDENTITY)


@dataclass(frozen=True, slots=True)
class Message:
    """A message written with pg_logical_emit_message (publication option messages)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    pass


@dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class StreamAbort:
    xid: int
    subxid: int


Event = (Begin | Commit | Origin | Relation | TypeInfo | Insert | Update | Delete | Truncate
         | Message | StreamStart | StreamStop | StreamCommit | StreamAbort)


# -- the reader ---------------------------------------------------------------------------

@dataclass(slots=True)
class _Cursor:
    data: bytes
    pos: int = 0
    tag: str = field(default="?")

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise PgOutputError(f"pgoutput {self.tag!r} message is truncated "
                                f"(needs {end} bytes, has {len(self.data)})")
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def unpack(self, st: Struct):
        return st.unpack(self.take(st.size))[0]

    def u8(self) -> int:
        return self.unpack(_U8)

    def i16(self) -> int:
        return self.unpack(_I16)

    def u32(self) -> int:
        return self.unpack(_U32)

    def i32(self) -> int:
        return self.unpack(_I32)

    def u64(self) -> int:
        return self.unpack(_U64)

    def time(self) -> datetime:
        return PG_EPOCH + timedelta(microseconds=self.unpack(_I64))

    def cstr(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise PgOutputError(f"pgoutput {self.tag!r} message: unterminated string")
        raw = self.data[self.pos:end]
        self.pos = end + 1
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            raise PgOutputError(f"pgoutput {self.tag!r} message: invalid UTF-8 ({exc})") from None

    def tuple_data(self) -> tuple[Value, ...]:
        n = self.i16()
        if n < 0:
            raise PgOutputError(f"pgoutput {self.tag!r} message: negative column count")
        values: list[Value] = []
        for _ in range(n):
            kind = self.take(1)
            if kind == b"n":
                values.append(None)
            elif kind == b"u":
                values.append(UNCHANGED_TOAST)
            elif kind in (b"t", b"b"):
                length = self.i32()
                raw = self.take(length)
                if kind == b"b":
                    values.append(Binary(raw))
                else:
                    try:
                        values.append(raw.decode())
                    except UnicodeDecodeError as exc:
                        raise PgOutputError(f"pgoutput text column is not UTF-8 ({exc})") from None
            else:
                raise PgOutputError(f"pgoutput tuple column of unknown kind {kind!r}")
        return tuple(values)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise PgOutputError(f"pgoutput {self.tag!r} message has "
                                f"{len(self.data) - self.pos} trailing bytes")


def decode(data: bytes, *, in_stream: bool = False) -> Event:
    """One pgoutput message as an event; PgOutputError if it does not decode."""
    if not data:
        raise PgOutputError("empty pgoutput message")
    tag = chr(data[0])
    c = _Cursor(bytes(data), 1, tag)
    reader = _READERS.get(tag)
    if reader is None:
        raise PgOutputError(f"unknown pgoutput message tag {tag!r}")
    event = reader(c, in_stream)
    c.end()
    return event


def _xid(c: _Cursor, in_stream: bool) -> int | None:
    return c.u32() if in_stream else None


def _begin(c: _Cursor, _s: bool) -> Begin:
    return Begin(c.u64(), c.time(), c.u32())


def _commit(c: _Cursor, _s: bool) -> Commit:
    return Commit(c.u8(), c.u64(), c.u64(), c.time())


def _origin(c: _Cursor, _s: bool) -> Origin:
    return Origin(c.u64(), c.cstr())


def _relation(c: _Cursor, s: bool) -> Relation:
    xid = _xid(c, s)
    oid, namespace, name = c.u32(), c.cstr(), c.cstr()
    identity = chr(c.u8())
    ncols = c.i16()
    if ncols < 0:
        raise PgOutputError("pgoutput relation with a negative column count")
    cols = []
    for _ in range(ncols):
        flags = c.u8()
        cols.append(Column(c.cstr(), c.u32(), c.i32(), bool(flags & 1)))
    return Relation(oid, namespace, name, identity, tuple(cols), xid)


def _type(c: _Cursor, s: bool) -> TypeInfo:
    xid = _xid(c, s)
    return TypeInfo(c.u32(), c.cstr(), c.cstr(), xid)


def _expect(c: _Cursor, *tags: bytes) -> bytes:
    got = c.take(1)
    if got not in tags:
        raise PgOutputError(f"pgoutput {c.tag!r} message: expected "
                            f"{' or '.join(map(repr, tags))}, got {got!r}")
    return got


def _insert(c: _Cursor, s: bool) -> Insert:
    xid = _xid(c, s)
    oid = c.u32()
    _expect(c, b"N")
    return Insert(oid, c.tuple_data(), xid)


def _update(c: _Cursor, s: bool) -> Update:
    xid = _xid(c, s)
    oid = c.u32()
    sub = _expect(c, b"K", b"O", b"N")
    old = None
    if sub != b"N":
        old = c.tuple_data()
        _expect(c, b"N")
    return Update(oid, c.tuple_data(), old, sub == b"K", xid)


def _delete(c: _Cursor, s: bool) -> Delete:
    xid = _xid(c, s)
    oid = c.u32()
    sub = _expect(c, b"K", b"O")
    return Delete(oid, c.tuple_data(), sub == b"K", xid)


def _truncate(c: _Cursor, s: bool) -> Truncate:
    xid = _xid(c, s)
    n = c.i32()
    if n < 0:
        raise PgOutputError("pgoutput truncate with a negative relation count")
    options = c.u8()
    return Truncate(tuple(c.u32() for _ in range(n)), options, xid)


def _message(c: _Cursor, s: bool) -> Message:
    xid = _xid(c, s)
    flags = c.u8()
    lsn, prefix = c.u64(), c.cstr()
    content = c.take(c.i32())
    return Message(bool(flags & 1), lsn, prefix, content, xid)


def _stream_start(c: _Cursor, _s: bool) -> StreamStart:
    return StreamStart(c.u32(), c.u8() == 1)


def _stream_stop(c: _Cursor, _s: bool) -> StreamStop:
    return StreamStop()


def _stream_commit(c: _Cursor, _s: bool) -> StreamCommit:
    return StreamCommit(c.u32(), c.u8(), c.u64(), c.u64(), c.time())


def _stream_abort(c: _Cursor, _s: bool) -> StreamAbort:
    return StreamAbort(c.u32(), c.u32())


_READERS = {
    "B": _begin, "C": _commit, "O": _origin, "R": _relation, "Y": _type, "I": _insert,
    "U": _update, "D": _delete, "T": _truncate, "M": _message, "S": _stream_start,
    "E": _stream_stop, "c": _stream_commit, "A": _stream_abort,
}


def lsn_text(lsn: int) -> str:
    """An LSN as PostgreSQL prints it (X/X)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """An LSN from PostgreSQL's X/X text form."""
    hi, sep, lo = text.partition("/")
    if not sep:
        raise ValueError(f"invalid LSN {text!r}")
    return (int(hi, 16) << 32) | int(lo, 16)
