"""The COPY splitter read against PostgreSQL's own COPY: for each payload, the keys the
splitter reads are the values PostgreSQL stores, and the per-shard streams it builds
(prologue + that shard's rows + epilogue) load on their own to the same rows in total."""

from __future__ import annotations

import struct

import psycopg
import pytest

from pgshard.protocol.copyrows import BINARY_SIGNATURE, CopySplitter
from pgshard.protocol.values import INT8
from pgshard.sql.copy_stmt import parse_copy_in
from tests.fixtures.clusters import temp_cluster


@pytest.fixture(scope="module")
def dsn():
    with temp_cluster(shards=1, replicas=0) as c:
        yield c.shards[0].primary.dsn


def _binary(rows):
    out = BINARY_SIGNATURE + struct.pack("!ii", 0, 0)
    for k, v in rows:
        out += struct.pack("!h", 2)
        for f in (k, v):
            out += struct.pack("!i", -1) if f is None else struct.pack("!i", len(f)) + f
    return out + b"\xff\xff"


# (COPY options after "COPY t (k, v) FROM STDIN", payload)
CASES = [
    ("", b"1\ta\n\\N\tb\nx\\ty\tc\na\\\nb\td\n\\101\\x42\te\n\tf\nz\tg"),
    ("WITH (DELIMITER '|', NULL 'NULL')", b"NULL|1\r\n\\N|2\r\na\\|b|3\r\n"),
    ("WITH (FORMAT text, HEADER)", b"k\tv\n7\tx\n8\ty\n\\.\n"),
    ("WITH (FORMAT csv)", b'1,a\n"x,y",b\n"multi\nline",c\n"say ""hi""",d\n,e\n"",f\nab"c,d"e,g\n'),
    ("WITH (FORMAT csv, HEADER, DELIMITER ';', QUOTE '''', NULL '-')",
     b"'k';v\n'a;b';1\n-;2\n'-';3\n'it''s';4\n"),
    ("WITH (FORMAT csv, ESCAPE '\\')", b'"a\\"b\\\\",1\n"q\\x",2\nplain\\,3\n'),
    ("WITH (FORMAT csv)", b'1,"a\r\nb"\r\n2,c\r\n\\.\r\n'),
]


def _copy(conn, sql: str, data: bytes) -> None:
    with conn.cursor() as cur, cur.copy(sql) as copy:
        copy.write(data)


def _load(conn, options: str, data: bytes) -> list:
    conn.execute("DROP TABLE IF EXISTS copy_probe")
    conn.execute("CREATE TABLE copy_probe (n serial, k text, v text)")
    _copy(conn, f"COPY copy_probe (k, v) FROM STDIN {options}", data)
    return conn.execute("SELECT k, v FROM copy_probe ORDER BY n").fetchall()


@pytest.mark.parametrize("options, data", CASES)
def test_keys_match_what_postgresql_stores(dsn, options, data):
    stmt = parse_copy_in(f"COPY copy_probe (k, v) FROM STDIN {options}")
    sp = CopySplitter(stmt.splitter_format("k"), stmt.key_index("k"))
    rows = []
    for i in range(0, len(data), 3):           # awkward chunk boundaries
        rows += sp.feed(data[i:i + 3])
    rows += sp.finish()
    with psycopg.connect(dsn, autocommit=True) as conn:
        stored = _load(conn, options, data)
        keys = [None if r.key is None else r.key.decode() for r in rows]
        assert keys == [k for k, _ in stored]
        # Two "shards": even and odd rows, each stream complete in itself.
        parts = []
        for parity in (0, 1):
            stream = sp.prologue + b"".join(r.data for r in rows[parity::2]) + sp.epilogue
            parts += _load(conn, options, stream)
    assert sorted(parts, key=repr) == sorted(stored, key=repr)


def test_binary_streams_per_shard(dsn):
    rows_in = [(struct.pack("!q", i), f"v{i}".encode()) for i in (1, -2, 3)] + [(None, b"n")]
    data = _binary(rows_in)
    sp = CopySplitter(parse_copy_in("COPY t FROM STDIN BINARY").format, 0, INT8)
    rows = sp.feed(data[:7]) + sp.feed(data[7:]) + sp.finish()
    assert [r.key for r in rows] == [b"1", b"-2", b"3", None]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS copy_bin")
        conn.execute("CREATE TABLE copy_bin (k bigint, v text)")
        for group in (rows[:1], rows[1:]):
            stream = sp.prologue + b"".join(r.data for r in group) + sp.epilogue
            _copy(conn, "COPY copy_bin FROM STDIN BINARY", stream)
        got = conn.execute("SELECT k, v FROM copy_bin").fetchall()
    assert sorted(got, key=repr) == sorted(
        [(1, "v1"), (-2, "v-2"), (3, "v3"), (None, "n")], key=repr)


@pytest.mark.parametrize("options", ["", "WITH (FORMAT csv)", "WITH (FORMAT csv, ESCAPE '\\')"])
def test_random_payloads_postgresql_accepts_read_the_same(dsn, options):
    """Random two-column payloads over the characters that matter: whenever PostgreSQL's
    COPY accepts one, the splitter's keys are the values it stored."""
    import random

    rng = random.Random(11)
    field = [b"a", b"b", b"\\", b'"', b"\\N", b"\\t", b"x,y", b'"q""r"', b'"m\nl"', b".", b""]
    delim = b"," if "csv" in options else b"\t"
    stmt = parse_copy_in(f"COPY copy_probe (k, v) FROM STDIN {options}")
    accepted = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(80):
            lines = [rng.choice(field) + rng.choice(field) + delim + rng.choice(field)
                     for _ in range(rng.randrange(1, 5))]
            data = b"\n".join(lines) + b"\n"
            try:
                stored = _load(conn, options, data)
            except psycopg.Error:
                continue
            accepted += 1
            sp = CopySplitter(stmt.splitter_format("k"), 0)
            rows = sp.feed(data[:5]) + sp.feed(data[5:]) + sp.finish()
            assert [None if r.key is None else r.key.decode() for r in rows] == \
                [k for k, _ in stored], data
    assert accepted >= 10


def test_copy_without_columns_reads_the_key_where_postgresql_does(dsn):
    """COPY with no column list skips generated and dropped columns: the column query gives
    the key's position and type as COPY sees them, and its keys are what PostgreSQL stores."""
    from pgshard.protocol.values import INT4
    from pgshard.sql.copy_stmt import copy_columns_sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS copy_cols")
        conn.execute("DROP DOMAIN IF EXISTS copy_id")
        conn.execute("CREATE DOMAIN copy_id AS int4")
        conn.execute("CREATE TABLE copy_cols (gone int, g int GENERATED ALWAYS AS (1) STORED, "
                     "note text, id copy_id)")
        conn.execute("ALTER TABLE copy_cols DROP COLUMN gone")
        cols = conn.execute(copy_columns_sql("copy_cols")).fetchall()
        assert cols == [("note", 25), ("id", INT4)]
        stmt = parse_copy_in("COPY copy_cols FROM STDIN")
        index = stmt.key_index("id", [name for name, _ in cols])
        data = b"a\t007\nb\t-3\n"
        sp = CopySplitter(stmt.format, index, dict(cols)["id"])
        keys = [r.key for r in sp.feed(data) + sp.finish()]
        _copy(conn, "COPY copy_cols FROM STDIN", data)
        stored = [str(r[0]).encode() for r in conn.execute("SELECT id FROM copy_cols")]
    assert keys == stored == [b"7", b"-3"]
