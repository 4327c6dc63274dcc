"""COPY data split into rows (pgshard.protocol.copyrows) and COPY statements read
(pgshard.sql.copy_stmt): tables of data in, rows and keys out, fed at every boundary."""

from __future__ import annotations

import struct
import uuid

import pytest

from pgshard.protocol.copyrows import (
    BINARY_SIGNATURE,
    BadCopyFileFormat,
    CopyFormat,
    CopySplitter,
    ProgramLimitExceeded,
)
from pgshard.protocol.errors import FeatureNotSupported, PgError
from pgshard.protocol.values import INT2, INT4, INT8, TEXT, UUID, VARCHAR
from pgshard.sql.copy_stmt import parse_copy_in

TEXT_FMT = CopyFormat.text()
CSV_FMT = CopyFormat.csv()


def split(fmt, data: bytes, key_index=0, key_oid=None, chunks=None):
    """Rows as (data, key) and the splitter, data fed in the given chunk sizes."""
    sp = CopySplitter(fmt, key_index, key_oid)
    rows = []
    if chunks is None:
        rows += sp.feed(data)
    else:
        pos = 0
        for n in chunks:
            rows += sp.feed(data[pos:pos + n])
            pos += n
        rows += sp.feed(data[pos:])
    rows += sp.finish()
    return [(r.data, r.key) for r in rows], sp


def every_split(fmt, data: bytes, key_index=0, key_oid=None):
    """The same rows whether fed whole, a byte at a time, or cut at any one point."""
    whole, sp = split(fmt, data, key_index, key_oid)
    assert split(fmt, data, key_index, key_oid, chunks=[1] * len(data))[0] == whole
    for cut in range(1, len(data)):
        assert split(fmt, data, key_index, key_oid, chunks=[cut])[0] == whole, cut
    return whole, sp


@pytest.mark.parametrize("data, key_index, expected", [
    (b"1\ta\n2\tb\n", 0, [(b"1\ta\n", b"1"), (b"2\tb\n", b"2")]),
    (b"1\ta\n2\tb", 1, [(b"1\ta\n", b"a"), (b"2\tb", b"b")]),          # no final newline
    (b"1\ta\r\n2\tb\r\n", 1, [(b"1\ta\r\n", b"a"), (b"2\tb\r\n", b"b")]),
    (b"1\ta\r2\tb\r", 1, [(b"1\ta\r", b"a"), (b"2\tb\r", b"b")]),
    (b"x\\ty\tz\n", 0, [(b"x\\ty\tz\n", b"x\ty")]),                    # \t escape
    (b"a\\\tb\tc\n", 1, [(b"a\\\tb\tc\n", b"c")]),                     # escaped delimiter
    (b"a\\\nb\tk\n", 1, [(b"a\\\nb\tk\n", b"k")]),                     # escaped newline
    (b"a\\\\\tk\n", 0, [(b"a\\\\\tk\n", b"a\\")]),                     # \\ then delimiter
    (b"\\N\tk\n", 0, [(b"\\N\tk\n", None)]),                           # NULL
    (b"\\101\\x42\\x4\\n\\q\tk\n", 0, [(b"\\101\\x42\\x4\\n\\q\tk\n", b"AB\x04\nq")]),
    (b"k1\n\\.\nignored\n", 0, [(b"k1\n", b"k1")]),                     # end-of-data marker
    (b"\t\n", 1, [(b"\t\n", b"")]),                                       # empty field
])
def test_text_rows(data, key_index, expected):
    assert every_split(TEXT_FMT, data, key_index)[0] == expected


def test_text_custom_delimiter_and_null():
    fmt = CopyFormat.text(delimiter=b"|", null=b"NULL")
    rows, _ = every_split(fmt, b"NULL|1\n\\N|2\n", 0)
    assert rows == [(b"NULL|1\n", None), (b"\\N|2\n", b"N")]


def test_text_header_is_each_shards_prologue():
    rows, sp = every_split(CopyFormat.text(header=True), b"id\tname\n7\tx\n", 0)
    assert rows == [(b"7\tx\n", b"7")]
    assert sp.prologue == b"id\tname\n" and sp.epilogue == b"" and sp.rows == 1


@pytest.mark.parametrize("data, key_index, expected", [
    (b"1,a\n2,b\n", 1, [(b"1,a\n", b"a"), (b"2,b\n", b"b")]),
    (b'"x,y",1\n', 0, [(b'"x,y",1\n', b"x,y")]),
    (b'"multi\nline",2\n3,4\n', 0, [(b'"multi\nline",2\n', b"multi\nline"),
                                    (b"3,4\n", b"3")]),
    (b'"say ""hi""",k\n', 0, [(b'"say ""hi""",k\n', b'say "hi"')]),
    (b',k\n"",k\n', 0, [(b",k\n", None), (b'"",k\n', b"")]),             # NULL vs ""
    (b'ab"c,d"e,k\n', 0, [(b'ab"c,d"e,k\n', b"abc,de")]),                # mixed quoting
    (b'1,"a\r\nb"\r\n', 1, [(b'1,"a\r\nb"\r\n', b"a\r\nb")]),
    (b"5,x\n\\.\n", 0, [(b"5,x\n", b"5")]),
    (b'"\\.",1\n', 0, [(b'"\\.",1\n', b"\\.")]),                          # quoted: data
    (b"a\\,b\n", 1, [(b"a\\,b\n", b"b")]),                                 # no escapes unquoted
])
def test_csv_rows(data, key_index, expected):
    assert every_split(CSV_FMT, data, key_index)[0] == expected


def test_csv_escape_other_than_quote():
    fmt = CopyFormat.csv(escape=b"\\")
    rows, _ = every_split(fmt, b'"a\\"b\\\\",1\n"q\\x",2\n', 0)
    assert rows == [(b'"a\\"b\\\\",1\n', b'a"b\\'), (b'"q\\x",2\n', b"q\\x")]


def test_csv_custom_quote_delimiter_null_header():
    fmt = CopyFormat.csv(delimiter=b";", quote=b"'", null=b"-", header=True)
    rows, sp = every_split(fmt, b"'id;x';n\n'a;b';1\n-;2\n'-';3\n", 0)
    assert sp.prologue == b"'id;x';n\n"
    assert rows == [(b"'a;b';1\n", b"a;b"), (b"-;2\n", None), (b"'-';3\n", b"-")]


def test_csv_force_null_and_force_not_null():
    assert split(CopyFormat.csv(force_not_null=True), b",1\n")[0] == [(b",1\n", b"")]
    assert split(CopyFormat.csv(force_null=True), b'"",1\n')[0] == [(b'"",1\n', None)]


def test_csv_unterminated_quote_is_an_error():
    sp = CopySplitter(CSV_FMT, 0)
    assert sp.feed(b'"open,1\n') == []
    with pytest.raises(BadCopyFileFormat, match="unterminated CSV quoted field"):
        sp.finish()


@pytest.mark.parametrize("fmt", [TEXT_FMT, CSV_FMT])
def test_missing_key_field_is_an_error(fmt):
    with pytest.raises(BadCopyFileFormat, match="missing data for the shard key column"):
        split(fmt, b"only\n", key_index=2)


def test_canonical_keys_with_the_key_type():
    rows, _ = every_split(TEXT_FMT, b"007\n-0\n", 0, INT8)
    assert [k for _, k in rows] == [b"7", b"0"]
    u = uuid.uuid4()
    rows, _ = split(CSV_FMT, str(u).upper().encode() + b"\n", 0, UUID)
    assert rows[0][1] == str(u).encode()
    with pytest.raises(PgError) as err:
        split(TEXT_FMT, b"abc\n", 0, INT4)
    assert err.value.sqlstate == "22P02"


def binary(rows: list[list[bytes | None]], ext: bytes = b"", trailer=True) -> bytes:
    out = BINARY_SIGNATURE + struct.pack("!ii", 0, len(ext)) + ext
    for row in rows:
        out += struct.pack("!h", len(row))
        for f in row:
            out += struct.pack("!i", -1) if f is None else struct.pack("!i", len(f)) + f
    return out + (b"\xff\xff" if trailer else b"")


@pytest.mark.parametrize("oid, value, key", [
    (INT2, struct.pack("!h", -5), b"-5"),
    (INT4, struct.pack("!i", 70000), b"70000"),
    (INT8, struct.pack("!q", 2 ** 40), str(2 ** 40).encode()),
    (TEXT, "naïve".encode(), "naïve".encode()),
    (VARCHAR, b"v", b"v"),
    (UUID, uuid.UUID(int=1).bytes, str(uuid.UUID(int=1)).encode()),
])
def test_binary_keys(oid, value, key):
    data = binary([[b"other", value], [None, value]])
    rows, sp = every_split(CopyFormat.binary(), data, 1, oid)
    assert [k for _, k in rows] == [key, key]
    header = BINARY_SIGNATURE + struct.pack("!ii", 0, 0)
    assert sp.prologue == header and sp.epilogue == b"\xff\xff"
    # Every shard's stream is prologue + its rows + epilogue: a valid file on its own.
    assert sp.prologue + b"".join(r for r, _ in rows) + sp.epilogue == data


def test_binary_header_extension_and_missing_trailer():
    data = binary([[struct.pack("!i", 1)]], ext=b"xyz", trailer=False)
    rows, sp = every_split(CopyFormat.binary(), data, 0, INT4)
    assert sp.prologue.endswith(b"\x00\x00\x00\x03xyz") and [k for _, k in rows] == [b"1"]


def test_binary_null_key_and_errors():
    rows, _ = split(CopyFormat.binary(), binary([[None]]), 0, INT4)
    assert rows[0][1] is None
    with pytest.raises(BadCopyFileFormat, match="signature"):
        split(CopyFormat.binary(), b"NOTPGCOPY\n\x00\x00\x00\x00\x00\x00\x00\x00\x00", 0, INT4)
    with pytest.raises(BadCopyFileFormat, match="unexpected EOF"):
        split(CopyFormat.binary(), binary([[b"\x00\x00\x00\x01"]], trailer=False)[:-2], 0, INT4)
    with pytest.raises(BadCopyFileFormat, match="no shard key column"):
        split(CopyFormat.binary(), binary([[b"\x00\x00\x00\x01"]]), 3, INT4)
    with pytest.raises(ValueError):
        CopySplitter(CopyFormat.binary(), 0)


def test_row_size_limit():
    sp = CopySplitter(TEXT_FMT, 0, max_row=16)
    with pytest.raises(ProgramLimitExceeded):
        sp.feed(b"x" * 17)


def test_no_data_at_all():
    for fmt in (TEXT_FMT, CSV_FMT, CopyFormat.text(header=True)):
        rows, sp = split(fmt, b"")
        assert rows == [] and sp.prologue == b""
    rows, sp = split(CopyFormat.binary(), b"", 0, INT4)
    assert rows == [] and sp.prologue == b"" and sp.epilogue == b""


# -- the statement ---------------------------------------------------------------------

@pytest.mark.parametrize("sql, table, columns, fmt", [
    ("COPY t FROM STDIN", "t", None, CopyFormat.text()),
    ("copy Public.T (b, A) from stdin", "t", ("b", "a"), CopyFormat.text()),
    ("COPY s.t FROM STDIN WITH (FORMAT csv, HEADER, DELIMITER ';', QUOTE '''', NULL 'x')",
     "s.t", None, CopyFormat.csv(header=True, delimiter=b";", quote=b"'", null=b"x")),
    ("COPY t FROM STDIN CSV HEADER DELIMITER '|'", "t", None,
     CopyFormat.csv(header=True, delimiter=b"|")),
    ("COPY t FROM STDIN WITH (FORMAT csv, ESCAPE '\\')", "t", None,
     CopyFormat.csv(escape=b"\\")),
    ("COPY t FROM STDIN BINARY", "t", None, CopyFormat.binary()),
    ("COPY t FROM STDIN WITH (FORMAT text, HEADER match, FREEZE)", "t", None,
     CopyFormat.text(header=True)),
    ("COPY t FROM STDIN WITH (HEADER false, NULL '')", "t", None, CopyFormat.text(null=b"")),
    ("COPY t FROM STDIN (DELIMITER E'\\t', ENCODING 'UTF8')", "t", None, CopyFormat.text()),
])
def test_parse_copy_in(sql, table, columns, fmt):
    c = parse_copy_in(sql)
    assert (c.table, c.columns, c.format) == (table, columns, fmt)


def test_key_index_from_columns_or_table_order():
    assert parse_copy_in("COPY t (v, id) FROM STDIN").key_index("id") == 1
    assert parse_copy_in("COPY t FROM STDIN").key_index("id", ["x", "y", "id"]) == 2
    with pytest.raises(FeatureNotSupported, match="shard key column id"):
        parse_copy_in("COPY t (v) FROM STDIN").key_index("id")
    c = parse_copy_in("COPY t FROM STDIN CSV FORCE NOT NULL id")
    assert c.splitter_format("id").force_not_null and not c.splitter_format("v").force_not_null


@pytest.mark.parametrize("sql, error", [
    ("COPY t TO STDOUT", ValueError),
    ("SELECT 1", ValueError),
    ("COPY t FROM '/etc/passwd'", FeatureNotSupported),
    ("COPY t FROM PROGRAM 'cat'", FeatureNotSupported),
    ("COPY t FROM STDIN WITH (ENCODING 'LATIN1')", FeatureNotSupported),
    ("COPY t FROM STDIN WITH (FORMAT csv, DELIMITER 'ab')", FeatureNotSupported),
    ("COPY t FROM STDIN WITH (FORMAT csv, FORCE_NOT_NULL *)", FeatureNotSupported),
    ("COPY t FROM STDIN WITH (FORMAT binary, HEADER)", PgError),
    ("COPY t FROM STDIN WITH (FORMAT xml)", PgError),
    ("COPY t FROM STDIN WITH (QUOTE '|')", PgError),
    ("COPY t FROM", PgError),
])
def test_parse_copy_in_refusals(sql, error):
    with pytest.raises(error):
        parse_copy_in(sql)


def _outcome(fmt, data, cuts):
    sp = CopySplitter(fmt, 1)
    rows, pos = [], 0
    try:
        for cut in [*cuts, len(data)]:
            rows += sp.feed(data[pos:cut])
            pos = cut
        rows += sp.finish()
    except BadCopyFileFormat as exc:
        return ("error", str(exc))
    return [(r.data, r.key) for r in rows], sp.prologue


@pytest.mark.parametrize("fmt", [TEXT_FMT, CopyFormat.text(header=True), CSV_FMT,
                                 CopyFormat.csv(escape=b"\\", header=True)])
def test_random_data_splits_the_same_at_any_boundaries(fmt):
    """Random bytes over the characters that matter: the outcome (rows, or the error) does
    not depend on where the payloads are cut; the rows put back together are the data."""
    import random

    rng = random.Random(7)
    alphabet = b'ab,\t"\\\r\n.N'
    for _ in range(300):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        whole = _outcome(fmt, data, [])
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, 3)))
        assert _outcome(fmt, data, cuts) == whole, data
        if whole[0] != "error":
            rows, prologue = whole
            joined = prologue + b"".join(r for r, _ in rows)
            assert data.startswith(joined), data
