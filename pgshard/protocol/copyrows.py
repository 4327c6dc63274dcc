"""COPY FROM STDIN data split into rows, sans I/O: CopyData payloads with any boundaries in,
whole rows out (their bytes exactly as to forward to a shard) with the shard key field's
value, for the text, CSV and binary formats.

    splitter = CopySplitter(CopyFormat.csv(header=True), key_index=0, key_oid=INT8)
    for chunk in copy_data_payloads:
        for row in splitter.feed(chunk):
            send(shard_of(row.key), row.data)
    rows = splitter.finish()          # at CopyDone: a last line without its newline
    # every shard's stream: splitter.prologue first (binary signature header, or the
    # header line a HEADER option makes each shard skip), its rows, splitter.epilogue last.

Rows are read as PostgreSQL's CopyReadLineText / CopyReadAttributes* read them: in text
format a backslash quotes the next byte (newlines included), CSV quotes toggle and, when
ESCAPE differs from QUOTE, an escape inside quotes takes the next byte. Data is assumed to
be in an encoding where these bytes never occur inside a multibyte character (UTF-8 and
every server encoding; not SJIS/BIG5/GBK client encodings). The end-of-data line `\\.` ends
the data (it is not forwarded; the shards get CopyDone).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from pgshard.protocol.errors import FeatureNotSupported, PgError
from pgshard.ring.hashing import key_from_param

BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
BINARY_TRAILER = b"\xff\xff"
DEFAULT_MAX_ROW = 256 * 1024 * 1024
_I16, _I32 = struct.Struct("!h"), struct.Struct("!i")
_TEXT_ESCAPES = {ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9,
                 ord("v"): 11}
_OCTAL = frozenset(b"01234567")
_HEX = frozenset(b"0123456789abcdefABCDEF")


class BadCopyFileFormat(PgError, code="22P04"):
    pass


class ProgramLimitExceeded(PgError, code="54000"):
    pass


@dataclass(frozen=True, slots=True)
class CopyFormat:
    """What a COPY statement's options say about its data (bytes, one byte each)."""

    kind: str = "text"             # text | csv | binary
    delimiter: bytes = b"\t"
    null: bytes = b"\\N"
    quote: bytes = b'"'
    escape: bytes = b'"'
    header: bool = False           # HEADER true or MATCH: the first line is a header
    force_null: bool = False       # CSV FORCE_NULL names the key column
    force_not_null: bool = False   # CSV FORCE_NOT_NULL names the key column

    @classmethod
    def text(cls, **kw) -> CopyFormat:
        return cls("text", **kw)

    @classmethod
    def csv(cls, **kw) -> CopyFormat:
        kw.setdefault("delimiter", b",")
        kw.setdefault("null", b"")
        if "quote" in kw:
            kw.setdefault("escape", kw["quote"])
        return cls("csv", **kw)

    @classmethod
    def binary(cls) -> CopyFormat:
        return cls("binary")


@dataclass(frozen=True, slots=True)
class CopyRow:
    data: bytes            # the row as to forward (its line ending, or its binary tuple)
    key: bytes | None      # the key field: its text form (canonical with key_oid); None: NULL
    number: int            # 1-based data row number (the header not counted)


class CopySplitter:
    """Incremental COPY data → rows (see the module text). key_oid: the key column's type;
    with it the key is canonical shard key bytes (pgshard.ring.hashing.key_from_param),
    without it the field's text form as written; binary format needs it."""

    def __init__(self, fmt: CopyFormat, key_index: int, key_oid: int | None = None, *,
                 max_row: int = DEFAULT_MAX_ROW):
        if key_index < 0:
            raise ValueError("key_index must be >= 0")
        if fmt.kind == "binary" and key_oid is None:
            raise ValueError("binary COPY needs the key column's type OID")
        if fmt.kind not in ("text", "csv", "binary"):
            raise ValueError(f"unknown COPY format {fmt.kind!r}")
        self.fmt = fmt
        self.key_index = key_index
        self.key_oid = key_oid
        self.max_row = max_row
        self.prologue: bytes | None = None if fmt.kind == "binary" or fmt.header else b""
        self.epilogue = BINARY_TRAILER if fmt.kind == "binary" else b""
        self.ended = False
        self.rows = 0
        # Unread data is _buf[_start:]; rows are cut by offset and the read part dropped
        # once per payload (deleting each row from the front would cost quadratic time).
        self._buf = bytearray()
        self._start = 0
        self._scan = 0                 # where the line scan resumes in _buf
        self._in_quote = False
        if fmt.kind == "csv":
            q, e = re.escape(fmt.quote), re.escape(fmt.escape)
            self._outside = re.compile(b"[" + q + b"\r\n]")
            self._inside = re.compile(b"[" + q + b"]" if fmt.quote == fmt.escape
                                      else b"[" + q + e + b"]")
        else:
            self._eol = re.compile(b"[\r\n]")

    @property
    def prologue_ready(self) -> bool:
        return self.prologue is not None

    def feed(self, data: bytes) -> list[CopyRow]:
        """The rows completed by this CopyData payload."""
        if self.ended:
            return []
        self._buf += data
        return self._drain(final=False)

    def finish(self) -> list[CopyRow]:
        """At CopyDone: the rows still buffered; an incomplete one is an error."""
        rows = [] if self.ended else self._drain(final=True)
        if self._buf and not self.ended:
            if self.fmt.kind == "binary":
                raise BadCopyFileFormat("unexpected EOF in COPY data")
            raise BadCopyFileFormat("unterminated CSV quoted field")
        if self.prologue is None:
            if self.fmt.kind == "binary":
                if self.rows or self._buf:
                    raise BadCopyFileFormat("COPY file signature not recognized")
                self.prologue = b""        # no data at all: nothing to send anywhere
                self.epilogue = b""
            else:
                self.prologue = b""        # HEADER but no line at all
        return rows

    # ------------------------------------------------------------------ reading

    def _drain(self, final: bool) -> list[CopyRow]:
        out: list[CopyRow] = []
        read = self._binary_item if self.fmt.kind == "binary" else self._line
        while not self.ended:
            item = read(final)
            if item is None:
                break
            if item is not True:
                out.append(item)
        if self._start:
            del self._buf[:self._start]
            self._scan -= self._start
            self._start = 0
        if len(self._buf) > self.max_row and not self.ended:
            raise ProgramLimitExceeded(f"a COPY row exceeds {self.max_row} bytes")
        return out

    def _line(self, final: bool):
        """The next whole line: a CopyRow, True for a header or the end marker, None if
        more data is needed."""
        end = self._find_eol(final)
        if end is None:
            return None
        body_end, line_end = end
        line = bytes(self._buf[self._start:line_end])
        body = line[:body_end - self._start]
        self._start = self._scan = line_end
        self._in_quote = False
        if body == b"\\.":
            self.ended = True
            return True
        if self.prologue is None:
            self.prologue = line
            return True
        self.rows += 1
        field = self._csv_key(body) if self.fmt.kind == "csv" else self._text_key(body)
        return CopyRow(line, self._canonical(field, 0), self.rows)

    def _find_eol(self, final: bool) -> tuple[int, int] | None:
        """(end of the line's body, end of its line ending) of the first whole line."""
        buf, i, start = self._buf, self._scan, self._start
        csv = self.fmt.kind == "csv"
        while True:
            if csv:
                pattern = self._inside if self._in_quote else self._outside
                m = pattern.search(buf, i)
            else:
                m = self._eol.search(buf, i)
            if m is None:
                self._scan = len(buf)
                if final and len(buf) > start and not self._in_quote:
                    return len(buf), len(buf)       # a last line without its newline
                return None
            j = m.start()
            c = buf[j]
            if csv:
                if c == self.fmt.quote[0]:
                    self._in_quote = not self._in_quote
                    i = j + 1
                    continue
                if self._in_quote:                  # the escape: it takes the next byte
                    if j + 1 >= len(buf):
                        self._scan = j
                        return None
                    i = j + 2
                    continue
            else:
                k = j
                while k > start and buf[k - 1] == 0x5C:
                    k -= 1
                if (j - k) % 2:                     # an escaped newline belongs to the data
                    i = j + 1
                    continue
            if c == 0x0D:
                if j + 1 >= len(buf) and not final:
                    self._scan = j                  # is it CR or CR LF? wait for the next byte
                    return None
                return j, j + 2 if j + 1 < len(buf) and buf[j + 1] == 0x0A else j + 1
            return j, j + 1

    # ------------------------------------------------------------------ key fields

    def _text_key(self, body: bytes) -> bytes | None:
        if 0x5C not in body:            # no escapes: the fields are what split() says
            fields = body.split(self.fmt.delimiter, self.key_index + 1)
            if len(fields) <= self.key_index:
                raise BadCopyFileFormat(f"missing data for the shard key column (field "
                                        f"{self.key_index + 1}) in COPY row {self.rows}")
            raw = fields[self.key_index]
            return None if raw == self.fmt.null else raw
        d = self.fmt.delimiter[0]
        start, n, i, size = 0, 0, 0, len(body)
        while True:
            # Find the end of field n: the next unescaped delimiter.
            while i < size and body[i] != d:
                i += 2 if body[i] == 0x5C else 1
            end = min(i, size)
            if n == self.key_index:
                raw = body[start:end]
                return None if raw == self.fmt.null else _text_unescape(raw)
            if i >= size:
                raise BadCopyFileFormat(f"missing data for the shard key column (field "
                                        f"{self.key_index + 1}) in COPY row {self.rows}")
            n += 1
            i += 1
            start = i

    def _csv_key(self, body: bytes) -> bytes | None:
        fmt = self.fmt
        if fmt.quote not in body:       # nothing quoted: the fields are what split() says
            fields = body.split(fmt.delimiter, self.key_index + 1)
            if len(fields) <= self.key_index:
                raise BadCopyFileFormat(f"missing data for the shard key column (field "
                                        f"{self.key_index + 1}) in COPY row {self.rows}")
            raw = fields[self.key_index]
            return None if raw == fmt.null and not fmt.force_not_null else raw
        d, q, e = fmt.delimiter[0], fmt.quote[0], fmt.escape[0]
        i, n, size = 0, 0, len(body)
        while True:
            start, value, quoted = i, bytearray(), False
            while i < size and body[i] != d:
                c = body[i]
                if c != q:
                    value.append(c)
                    i += 1
                    continue
                quoted, i = True, i + 1
                while True:
                    if i >= size:
                        raise BadCopyFileFormat("unterminated CSV quoted field")
                    c = body[i]
                    if c == e and i + 1 < size and body[i + 1] in (q, e):
                        value.append(body[i + 1])
                        i += 2
                    elif c == q:
                        i += 1
                        break
                    else:
                        value.append(c)
                        i += 1
            if n == self.key_index:
                raw = body[start:i]
                if not quoted and raw == fmt.null and not fmt.force_not_null:
                    return None
                if quoted and fmt.force_null and bytes(value) == fmt.null:
                    return None
                return bytes(value)
            if i >= size:
                raise BadCopyFileFormat(f"missing data for the shard key column (field "
                                        f"{self.key_index + 1}) in COPY row {self.rows}")
            n += 1
            i += 1

    # ------------------------------------------------------------------ binary

    def _binary_item(self, final: bool):
        buf, p0 = self._buf, self._start
        have = len(buf) - p0
        if self.prologue is None:
            if have < 19:
                if have >= 11 and buf[p0:p0 + 11] != BINARY_SIGNATURE:
                    raise BadCopyFileFormat("COPY file signature not recognized")
                return None
            if buf[p0:p0 + 11] != BINARY_SIGNATURE:
                raise BadCopyFileFormat("COPY file signature not recognized")
            flags = _I32.unpack_from(buf, p0 + 11)[0]
            if flags & (1 << 16):
                raise BadCopyFileFormat("invalid COPY file header (WITH OIDS)")
            if flags & 0xFFFF0000 & ~(1 << 16):
                raise BadCopyFileFormat("unrecognized critical flags in COPY file header")
            ext = _I32.unpack_from(buf, p0 + 15)[0]
            if ext < 0:
                raise BadCopyFileFormat("invalid COPY file header (missing length)")
            if have < 19 + ext:
                return None
            self.prologue = bytes(buf[p0:p0 + 19 + ext])
            self._start = p0 + 19 + ext
            return True
        if have < 2:
            return None
        count = _I16.unpack_from(buf, p0)[0]
        if count == -1:
            self.ended = True
            self._start = len(buf)
            return True
        if count < 0:
            raise BadCopyFileFormat(f"row field count is {count}, expected a positive number")
        if self.key_index >= count:
            raise BadCopyFileFormat(f"row field count is {count}: no shard key column (field "
                                    f"{self.key_index + 1}) in COPY row {self.rows + 1}")
        end, pos, key = len(buf), p0 + 2, None
        for n in range(count):
            if end < pos + 4:
                return None
            size = _I32.unpack_from(buf, pos)[0]
            pos += 4
            if size < -1:
                raise BadCopyFileFormat("invalid field size")
            if size > 0 and end < pos + size:
                if pos + size - p0 > self.max_row:
                    raise ProgramLimitExceeded(f"a COPY row exceeds {self.max_row} bytes")
                return None
            if n == self.key_index and size >= 0:
                key = bytes(buf[pos:pos + size])
            pos += max(size, 0)
        data = bytes(buf[p0:pos])
        self._start = pos
        self.rows += 1
        return CopyRow(data, self._canonical(key, 1), self.rows)

    def _canonical(self, field: bytes | None, fmt: int) -> bytes | None:
        if field is None or self.key_oid is None:
            return field
        return key_from_param(field, fmt, self.key_oid)


def _text_unescape(raw: bytes) -> bytes:
    """A text-format field's value: backslash escapes decoded as CopyReadAttributesText."""
    if 0x5C not in raw:
        return raw
    out = bytearray()
    i, size = 0, len(raw)
    while i < size:
        c = raw[i]
        if c != 0x5C or i + 1 >= size:
            out.append(c)
            i += 1
            continue
        c = raw[i + 1]
        i += 2
        if c in _OCTAL:
            v, k = c - 0x30, 0
            while k < 2 and i < size and raw[i] in _OCTAL:
                v = v * 8 + raw[i] - 0x30
                i += 1
                k += 1
            out.append(v & 0xFF)
        elif c == ord("x") and i < size and raw[i] in _HEX:
            v = int(chr(raw[i]), 16)
            i += 1
            if i < size and raw[i] in _HEX:
                v = v * 16 + int(chr(raw[i]), 16)
                i += 1
            out.append(v)
        else:
            out.append(_TEXT_ESCAPES.get(c, c))
    return bytes(out)


def unsupported_option(what: str) -> FeatureNotSupported:
    return FeatureNotSupported(f"COPY {what} cannot be split by shard key",
                               hint="add a /* shard: name */ or /* shard_key: … */ hint to "
                                    "send the whole COPY to one shard")
