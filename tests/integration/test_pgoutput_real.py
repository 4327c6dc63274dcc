"""The pgoutput decoder against a real PostgreSQL: a slot's changes, read with
pg_logical_slot_get_binary_changes, decode into the events the changes were."""

from __future__ import annotations

import psycopg
import pytest

from pgshard.protocol import pgoutput as po
from tests.fixtures.clusters import temp_cluster

pytestmark = pytest.mark.integration

SETUP = """
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE kv (id bigint PRIMARY KEY, note text, big text, m mood, amount numeric(8, 2));
ALTER TABLE kv ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE full_t (a int, b text);
ALTER TABLE full_t REPLICA IDENTITY FULL;
CREATE PUBLICATION pub FOR TABLE kv, full_t;
"""


@pytest.fixture(scope="module")
def conn():
    with temp_cluster(shards=1, replicas=0) as cluster:
        with psycopg.connect(cluster.shards[0].primary.dsn, autocommit=True) as c:
            c.execute(SETUP)
            yield c


def flush_wal(conn) -> None:
    """The servers run with synchronous_commit off, and a slot is read only up to the flushed
    WAL: a commit with an xid that wrote WAL, made synchronous, flushes all WAL before it."""
    with conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = local")
        conn.execute("SELECT pg_current_xact_id(), pg_logical_emit_message(true, 'flush', '')")


def changes(conn, slot: str, *options: str) -> list[tuple[int, po.Event]]:
    flush_wal(conn)
    rows = conn.execute(
        "SELECT lsn::text, data FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, "
        "'proto_version', '1', 'publication_names', 'pub'"
        + "".join(f", '{o}'" for o in options) + ")", (slot,)).fetchall()
    return [(po.parse_lsn(lsn), po.decode(data)) for lsn, data in rows]


def dml(events):
    return [e for _, e in events if not isinstance(e, (po.Begin, po.Commit))]


def test_changes_decode_as_made(conn):
    conn.execute("SELECT pg_create_logical_replication_slot('s_text', 'pgoutput')")
    big = "x" * 100_000
    conn.execute("INSERT INTO kv VALUES (1, 'one', %s, 'happy', 9.5), (2, NULL, NULL, NULL, NULL)",
                 (big,))
    conn.execute("UPDATE kv SET note = 'uno' WHERE id = 1")          # big stays: unchanged toast
    conn.execute("UPDATE kv SET id = 3 WHERE id = 2")                 # key change: old key
    conn.execute("DELETE FROM kv WHERE id = 3")
    conn.execute("INSERT INTO full_t VALUES (1, 'a')")
    conn.execute("UPDATE full_t SET b = 'b'")
    conn.execute("DELETE FROM full_t")
    conn.execute("TRUNCATE full_t")
    # A transactional message needs a transaction with an xid to be decoded; this one is not.
    conn.execute("SELECT pg_logical_emit_message(false, 'pgshard', 'hello')")
    events = changes(conn, "s_text", "messages", "true")
    events = events[:-3]   # flush_wal's own transaction: Begin, Message, Commit

    begins = [e for _, e in events if isinstance(e, po.Begin)]
    commits = [(lsn, e) for lsn, e in events if isinstance(e, po.Commit)]
    assert len(begins) == len(commits) == 8
    for lsn, c in commits:
        assert c.end_lsn > c.commit_lsn and lsn == c.end_lsn   # the row's lsn ends the commit
    for b, (_, c) in zip(begins, commits, strict=True):
        assert b.final_lsn == c.commit_lsn and b.commit_time == c.commit_time

    ev = dml(events)
    types = [e for e in ev if isinstance(e, po.TypeInfo)]
    assert [(t.namespace, t.name) for t in types] == [("public", "mood")]
    rels = {e.oid: e for e in ev if isinstance(e, po.Relation)}
    kv = next(r for r in rels.values() if r.name == "kv")
    assert kv.namespace == "public" and kv.replica_identity == po.IDENTITY_DEFAULT
    assert [(c.name, c.is_key) for c in kv.columns] == [
        ("id", True), ("note", False), ("big", False), ("m", False), ("amount", False)]
    assert kv.columns[0].type_oid == 20 and kv.columns[3].type_oid == types[0].oid
    assert kv.columns[4].type_modifier == (8 << 16 | 2) + 4
    full = next(r for r in rels.values() if r.name == "full_t")
    assert full.replica_identity == po.IDENTITY_FULL

    rest = [e for e in ev if not isinstance(e, (po.Relation, po.TypeInfo))]
    assert rest == [
        po.Insert(kv.oid, ("1", "one", big, "happy", "9.50")),
        po.Insert(kv.oid, ("2", None, None, None, None)),
        po.Update(kv.oid, ("1", "uno", po.UNCHANGED_TOAST, "happy", "9.50")),
        po.Update(kv.oid, ("3", None, None, None, None), ("2", None, None, None, None), True),
        po.Delete(kv.oid, ("3", None, None, None, None), True),
        po.Insert(full.oid, ("1", "a")),
        po.Update(full.oid, ("1", "b"), ("1", "a"), False),
        po.Delete(full.oid, ("1", "b"), False),
        po.Truncate((full.oid,), 0),
        po.Message(False, rest[-1].lsn, "pgshard", b"hello"),
    ]
    conn.execute("SELECT pg_drop_replication_slot('s_text')")


def test_binary_option_sends_binary_columns(conn):
    conn.execute("SELECT pg_create_logical_replication_slot('s_bin', 'pgoutput')")
    conn.execute("INSERT INTO kv VALUES (10, 'ten', NULL, 'sad', 1)")
    ev = dml(changes(conn, "s_bin", "binary", "true"))
    ins = next(e for e in ev if isinstance(e, po.Insert))
    assert ins.new[0] == po.Binary((10).to_bytes(8, "big"))
    assert ins.new[1] == po.Binary(b"ten")
    assert ins.new[2] is None
    conn.execute("SELECT pg_drop_replication_slot('s_bin')")


def test_origin_is_decoded(conn):
    conn.execute("SELECT pg_create_logical_replication_slot('s_origin', 'pgoutput')")
    conn.execute("SELECT pg_replication_origin_create('elsewhere')")
    with conn.transaction():
        conn.execute("SELECT pg_replication_origin_session_setup('elsewhere')")
        conn.execute("SELECT pg_replication_origin_xact_setup('0/AB', now())")
        conn.execute("INSERT INTO kv VALUES (20, 'from elsewhere', NULL, NULL, NULL)")
    conn.execute("SELECT pg_replication_origin_session_reset()")
    ev = dml(changes(conn, "s_origin"))
    assert po.Origin(0xAB, "elsewhere") in ev
    conn.execute("SELECT pg_drop_replication_slot('s_origin')")
