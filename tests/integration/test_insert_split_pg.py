"""A split multi-row INSERT run on PostgreSQL through libpq's PQexecParams (Parse with the
parts' types, Bind with their values and format codes): the shards' parts together store
and return exactly what the original statement does."""

from __future__ import annotations

import struct

import psycopg
import pytest

from pgshard.ring.hashing import INT8, TEXT
from pgshard.sql.analysis import analyze
from pgshard.sql.insert_split import group_rows, split_bound_insert
from tests.fixtures.clusters import temp_cluster

SQL = ("INSERT INTO {t} (id, v, w) VALUES ($1, $2, $7), ($3, upper($2), $7), ($4, $5, $7),"
       " ($6, $5, $7) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v || $8 RETURNING id, v, w")


@pytest.fixture(scope="module")
def dsn():
    with temp_cluster(shards=1, replicas=0) as c:
        yield c.shards[0].primary.dsn


def _run(pg, sql: str, params, oids, formats):
    res = pg.exec_params(sql.encode(), list(params), list(oids), list(formats), 0)
    assert res.status == psycopg.pq.ExecStatus.TUPLES_OK, res.error_message
    return [tuple(res.get_value(r, c) for c in range(res.nfields)) for r in range(res.ntuples)]


@pytest.mark.parametrize("binary", [False, True])
def test_parts_store_and_return_what_the_whole_does(dsn, binary):
    ids = [11, 12, 13, 14]
    enc = (lambda i: struct.pack("!q", i)) if binary else (lambda i: str(i).encode())
    fk = 1 if binary else 0
    params = [enc(ids[0]), b"alpha", enc(ids[1]), enc(ids[2]), b"beta", enc(ids[3]), b"w",
              b"!"]
    formats = [fk, 0, fk, fk, 0, fk, 0, 0]
    oids = [INT8, TEXT, INT8, INT8, TEXT, INT8, 0, 0]
    groups = group_rows(analyze(SQL.format(t="t"), {"t": "id"}).insert_rows, params, formats,
                        oids, lambda key: "even" if int(key) % 2 == 0 else "odd")
    assert groups == {"odd": [0, 2], "even": [1, 3]}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in ("whole", "parts"):
            conn.execute(f"DROP TABLE IF EXISTS {t}")
            conn.execute(f"CREATE TABLE {t} (id bigint PRIMARY KEY, v text, w text)")
            conn.execute(f"INSERT INTO {t} VALUES (13, 'old', 'old')")   # one conflict
        whole = _run(conn.pgconn, SQL.format(t="whole"), params, oids, formats)
        returned = []
        for part in split_bound_insert(SQL.format(t="parts"), groups, params, formats,
                                       oids).values():
            assert len(part.params) < len(params)
            returned += _run(conn.pgconn, part.sql, part.params, part.oids, part.formats)
        assert sorted(returned) == sorted(whole)
        rows = {t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall()
                for t in ("whole", "parts")}
    assert rows["parts"] == rows["whole"]
    assert rows["whole"] == [(11, "alpha", "w"), (12, "ALPHA", "w"), (13, "beta!", "old"),
                             (14, "beta", "w")]
