"""pgshard.hash() in SQL is bit-exact with mmh3 (MurmurHash3 x86_32, seed 0, unsigned)."""

from __future__ import annotations

import uuid

import mmh3
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

# PostgreSQL text cannot hold NUL; everything else, astral planes included, is fair game.
ANY_CHAR = st.characters(codec="utf-8", exclude_characters="\x00")
ASTRAL_CHAR = st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF, codec="utf-8")
KEYS = st.text(alphabet=st.one_of(ANY_CHAR, ASTRAL_CHAR), max_size=40)
BATCH = settings(max_examples=30, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])

TEXT_QUERY = ("SELECT pgshard.hash(k) FROM unnest(%s::text[]) WITH ORDINALITY AS t(k, n)"
              " ORDER BY n")


def token(key: str) -> int:
    return mmh3.hash(key.encode(), seed=0, signed=False)


@pytest.fixture(scope="module")
def conn(pg_cluster):
    with psycopg.connect(pg_cluster.shards[0].primary.dsn, autocommit=True) as connection:
        yield connection


def sql_tokens(conn: psycopg.Connection, query: str, values: list) -> list[int]:
    return [row[0] for row in conn.execute(query, (values,)).fetchall()]


@BATCH
@given(keys=st.lists(KEYS, min_size=1, max_size=20))
@example(keys=["", "a", "ab", "abc", "abcd", "abcde", "hello", "42", "-1"])
@example(keys=["é", "日本語", "\U0001f600", "𝄞x", "\U0010ffff", "a\U0001f600bc", "x" * 1000])
def test_text_matches_mmh3(conn, keys: list[str]):
    assert sql_tokens(conn, TEXT_QUERY, keys) == [token(k) for k in keys]


@BATCH
@given(ints=st.lists(st.integers(min_value=-2**63, max_value=2**63 - 1), min_size=1,
                     max_size=20))
@example(ints=[0, 1, -1, 42, 2**31, -2**31, 2**63 - 1, -2**63])
def test_bigint_hashes_its_text_form(conn, ints: list[int]):
    query = ("SELECT pgshard.hash(k) FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(k, n)"
             " ORDER BY n")
    assert sql_tokens(conn, query, ints) == [token(str(i)) for i in ints]


@BATCH
@given(uuids=st.lists(st.uuids(), min_size=1, max_size=20))
def test_uuid_hashes_its_text_form(conn, uuids: list[uuid.UUID]):
    query = ("SELECT pgshard.hash(k) FROM unnest(%s::uuid[]) WITH ORDINALITY AS t(k, n)"
             " ORDER BY n")
    assert sql_tokens(conn, query, uuids) == [token(str(u)) for u in uuids]


def test_overload_resolution_and_nulls(conn):
    row = conn.execute("SELECT pgshard.hash(42), pgshard.hash(42::smallint), pgshard.hash('42'),"
                       " pgshard.hash(NULL::text), pgshard.hash(NULL::bigint),"
                       " pgshard.hash('6ba7b810-9dad-11d1-80b4-00c04fd430c8'::uuid)").fetchone()
    assert row == (token("42"), token("42"), token("42"), None, None,
                   token("6ba7b810-9dad-11d1-80b4-00c04fd430c8"))


def test_function_properties(conn):
    rows = conn.execute(
        "SELECT pg_get_function_identity_arguments(p.oid), p.provolatile, p.proisstrict,"
        " p.proparallel FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'pgshard' AND p.proname = 'hash' ORDER BY 1").fetchall()
    assert rows == [("bigint", "i", True, "s"), ("text", "i", True, "s"), ("uuid", "i", True, "s")]


def test_installed_on_every_shard_and_replica(pg_cluster):
    for node in pg_cluster.nodes:
        assert node.psql("SELECT pgshard.hash('pgshard')") == str(token("pgshard"))
