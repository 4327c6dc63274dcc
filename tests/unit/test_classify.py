"""Statement classification: kinds and comment hints (no servers)."""

from __future__ import annotations

import pytest

from pgshard.protocol.errors import InvalidParameterValue
from pgshard.sql import classify as r


@pytest.mark.parametrize("sql, kind", [
    ("BEGIN", r.BEGIN), ("begin;", r.BEGIN), ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", r.BEGIN),
    ("COMMIT", r.COMMIT), ("END", r.COMMIT), ("ROLLBACK", r.ROLLBACK), ("abort", r.ROLLBACK),
    ("ROLLBACK TO SAVEPOINT a", r.TXN_INNER), ("SAVEPOINT a", r.TXN_INNER),
    ("RELEASE a", r.TXN_INNER), ("COMMIT PREPARED 'x'", r.STATEMENT),
    ("SET search_path = a, b", r.SET), ("SET LOCAL work_mem TO '4MB'", r.SET_LOCAL),
    ("SET TIME ZONE 'UTC'", r.SET), ("SET TRANSACTION READ ONLY", r.TXN_INNER),
    ("SET pgshard.shard_key = '42'", r.SET_PGSHARD), ("RESET pgshard.shard_key", r.RESET_PGSHARD),
    ("SHOW pgshard.consistency", r.SHOW_PGSHARD), ("SHOW work_mem", r.SHOW),
    ("RESET ALL", r.RESET), ("DISCARD ALL", r.DISCARD_ALL), ("DEALLOCATE ALL", r.DEALLOCATE),
    ("DEALLOCATE PREPARE s1", r.DEALLOCATE), ("", r.EMPTY), (" ; ", r.EMPTY),
    ("SELECT 1", r.STATEMENT), ("/* c */ -- x\n (SELECT 1)", r.STATEMENT),
    ("BEGIN; SELECT 1; COMMIT", r.STATEMENT), ("SELECT ';'", r.STATEMENT),
])
def test_kinds(sql, kind):
    assert r.plan(sql).kind == kind
    assert type(r.plan(sql).kind) is r.Kind


def test_a_kind_reads_as_its_string():
    """Kinds are an enum, yet compare, hash and format as the strings they replaced (sets of
    plain strings such as the session's LOCAL_KINDS, log lines, metrics labels)."""
    k = r.plan("SET pgshard.shard = 'a'").kind
    assert k is r.Kind.SET_PGSHARD and k == "set_pgshard" and k in {"set_pgshard"}
    assert str(k) == f"{k}" == "set_pgshard"
    for member in r.Kind:
        assert getattr(r, member.name) is member   # the module-level aliases are the members


def test_multi_statement_detection_ignores_literals():
    assert r.plan("SELECT 'a;b'").multi is False
    assert r.plan("SELECT 1; SELECT 2").multi is True
    assert r.plan("SET application_name = 'a;b'").kind == r.SET


@pytest.mark.parametrize("sql, field, value", [
    ("SELECT 1 /* shard_key: 42 */", "shard_key", b"42"),
    ("/* shard_key: 'o''brien' */ SELECT 1", "shard_key", b"o'brien"),
    ("SELECT 1 /*shard_key=a-b_c.d:e*/", "shard_key", b"a-b_c.d:e"),
    ("SELECT 1 /* shard: shard3 */", "shard", "shard3"),
    ("SELECT $1 /* shard_key_param: 2 */", "key_param", 2),
    ("SELECT $1 /* shard_key: $1 */", "key_param", 1),
    ("SELECT 1 /* consistency: eventual */", "consistency", "eventual"),
])
def test_hints(sql, field, value):
    assert getattr(r.plan(sql), field) == value


@pytest.mark.parametrize("sql", ["SELECT 1 /* shard_key_param: 0 */",
                                 "SELECT 1 /* consistency: maybe */"])
def test_bad_hints_are_errors(sql):
    with pytest.raises(InvalidParameterValue):
        r.plan(sql)


def test_set_pgshard_parts():
    p = r.plan("SET LOCAL pgshard.shard_key TO 'k'")
    assert (p.kind, p.name, p.value, p.consistency) == (r.SET_PGSHARD, "shard_key", "k", "local")


def test_no_key_error_names_the_ways_out():
    err = r.no_key_error(r.plan("INSERT INTO t VALUES (1)"), 3)
    assert err.sqlstate == "0A000" and "shard_key" in err.hint and "3 shards" in err.message
