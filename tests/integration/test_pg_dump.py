"""pg_dump and pg_restore through the proxy, on real servers: a database of two sharded
tables (an integer and a text key) dumped through the proxy and restored through it into
another logical database puts every row back on its owner shard, as the source has it
(checked on each primary directly); the pieces pg_dump needs, one by one: set_config of
search_path replayed on every shard, LOCK TABLE and COPY … TO STDOUT on every shard inside
its transaction, SQL PREPARE/EXECUTE inside it, keyless EXPLAIN, pgshard's own objects
skipped on restore and protected from DROP."""

from __future__ import annotations

import subprocess

import asyncpg
import psycopg
import pytest

from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import USERS, _shards

TABLES = [{"name": "accounts", "shard_key": "id"}, {"name": "docs", "shard_key": "code"}]
DATABASES = ("dump_src", "dump_dst", "dump_dst2")
SCHEMA = [
    "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric "
    "NOT NULL DEFAULT 0)",
    "CREATE INDEX accounts_owner ON accounts (owner)",
    "CREATE TABLE docs (code text PRIMARY KEY, body text, tags text[])",
    "CREATE VIEW rich AS SELECT id, owner FROM accounts WHERE balance > 100",
]


@pytest.fixture(scope="module")
def env(pg_cluster):
    for name in DATABASES:
        for shard in pg_cluster.shards:
            shard.primary.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        pg_cluster.add_database(name)
    cfg = {"proxy": {"database": "app", "pool_size": 4},
           "databases": [{"name": name} for name in DATABASES],
           "users": USERS, "shards": _shards(pg_cluster), "tables": TABLES}
    with ProxyProcess(cfg) as proxy:
        with psycopg.connect(proxy.dsn(database="dump_src"), autocommit=True) as c:
            for sql in SCHEMA:
                c.execute(sql)
            c.execute("INSERT INTO accounts VALUES " + ", ".join(
                f"({i}, 'owner{i % 7}', {i * 3})" for i in range(1, 201)))
            c.execute("INSERT INTO docs VALUES " + ", ".join(
                f"('doc-{i}', E'line one\\\\nline\\ttwo {i}', '{{a,b{i}}}')"
                for i in range(1, 101)))
        yield pg_cluster, proxy


def _bin(cluster, name: str) -> str:
    return str(cluster.bindir / name)


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kw)


def _per_shard(cluster, database: str, sql: str) -> dict[str, str]:
    return {s.name: s.primary.psql(sql, database=database) for s in cluster.shards}


ROWS = {"accounts": "SELECT string_agg(id || ':' || owner || ':' || balance, ',' ORDER BY id) "
                    "FROM accounts",
        "docs": "SELECT string_agg(code || ':' || body || ':' || tags::text, ',' ORDER BY code) "
                "FROM docs"}


# pgshard's own objects in a database: its functions and tables, and their contents
OWN = ("SELECT (SELECT string_agg(p.oid::regprocedure::text, ',' ORDER BY 1) FROM pg_proc p "
       "WHERE p.pronamespace = 'pgshard'::regnamespace) || '/' || coalesce((SELECT "
       "string_agg(relname, ',' ORDER BY 1) FROM pg_class WHERE relnamespace = "
       "'pgshard'::regnamespace), '') || '/' || coalesce((SELECT string_agg(evtname, ',') "
       "FROM pg_event_trigger), '')")


def _assert_same_placement(cluster, src: str, dst: str) -> None:
    for table, sql in ROWS.items():
        a, b = _per_shard(cluster, src, sql), _per_shard(cluster, dst, sql)
        assert all(a.values()), f"{table}: a shard of {src} holds no rows (test data)"
        assert a == b, f"{table}: rows are not on the shards they were on in {src}"


def test_dump_and_restore_through_the_proxy(env):
    cluster, proxy = env
    dump = _run([_bin(cluster, "pg_dump"), proxy.dsn(database="dump_src")])
    assert dump.returncode == 0, dump.stderr
    assert "COPY public.accounts (id, owner, balance) FROM stdin;" in dump.stdout
    assert dump.stdout.count("\n", dump.stdout.index("COPY public.accounts")) > 200
    own_before = _per_shard(cluster, "dump_dst", OWN)
    restore = _run([_bin(cluster, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                    proxy.dsn(database="dump_dst")], input=dump.stdout)
    assert restore.returncode == 0, restore.stderr
    assert "pgshard: skipped" in restore.stderr   # its own schema: kept as the cluster has it
    _assert_same_placement(cluster, "dump_src", "dump_dst")
    idx = _per_shard(cluster, "dump_dst", "SELECT count(*) FROM pg_indexes WHERE indexname = "
                                          "'accounts_owner'")
    assert set(idx.values()) == {"1"}
    # each shard kept its own pgshard objects (a restore never copies one shard's over all)
    assert _per_shard(cluster, "dump_dst", OWN) == own_before


def test_custom_format_with_pg_restore(env):
    cluster, proxy = env
    dump = subprocess.run([_bin(cluster, "pg_dump"), "-Fc", proxy.dsn(database="dump_src")],
                          capture_output=True, timeout=120)
    assert dump.returncode == 0, dump.stderr
    restore = subprocess.run([_bin(cluster, "pg_restore"), "--exit-on-error", "-d",
                              proxy.dsn(database="dump_dst2")], input=dump.stdout,
                             capture_output=True, timeout=120)
    assert restore.returncode == 0, restore.stderr.decode()
    _assert_same_placement(cluster, "dump_src", "dump_dst2")


def test_schema_only_and_one_table(env):
    cluster, proxy = env
    only = _run([_bin(cluster, "pg_dump"), "-t", "docs", "--data-only",
                 proxy.dsn(database="dump_src")])
    assert only.returncode == 0, only.stderr
    assert "COPY public.docs (code, body, tags) FROM stdin;" in only.stdout
    assert "accounts" not in only.stdout
    schema = _run([_bin(cluster, "pg_dump"), "--schema-only", proxy.dsn(database="dump_src")])
    assert schema.returncode == 0, schema.stderr
    assert "CREATE VIEW public.rich" in schema.stdout and "COPY " not in schema.stdout


async def test_set_config_search_path_is_replayed_on_every_shard(env):
    _, proxy = env
    c = await asyncpg.connect(proxy.dsn(database="dump_src"))
    try:
        await c.execute("SELECT pg_catalog.set_config('search_path', '', false)")
        assert await c.fetchval("SELECT count(*) FROM public.accounts") == 200   # fan-out
        with pytest.raises(asyncpg.UndefinedTableError):
            await c.fetchval("SELECT count(*) FROM accounts")
        for shard in ("shard0", "shard1"):
            assert await c.fetchval(f"/* shard: {shard} */ SELECT "
                                    "current_setting('search_path')") == ""
    finally:
        await c.close()
    c = await asyncpg.connect(proxy.dsn(database="dump_src"))
    try:   # and nobody else gets it
        assert await c.fetchval("SELECT count(*) FROM accounts") == 200
    finally:
        await c.close()


async def test_the_dump_transaction_on_every_shard(env):
    _, proxy = env
    c = await asyncpg.connect(proxy.dsn(database="dump_src"))
    try:
        await c.execute("BEGIN")
        await c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        await c.execute("LOCK TABLE public.accounts, public.docs IN ACCESS SHARE MODE")
        for shard in ("shard0", "shard1"):   # every shard is in it, repeatable read
            assert await c.fetchval(f"/* shard: {shard} */ SHOW transaction_isolation") \
                == "repeatable read"
            assert await c.fetchval(
                f"/* shard: {shard} */ SELECT count(*) FROM pg_locks WHERE pid = "
                "pg_backend_pid() AND relation = 'public.accounts'::regclass") == 1
        await c.execute("PREPARE dump_q(oid) AS SELECT relname FROM pg_class WHERE oid = $1")
        oid = await c.fetchval("SELECT 'public.docs'::regclass::oid")
        assert await c.fetchval(f"EXECUTE dump_q({oid})") == "docs"
        await c.execute("COMMIT")
        assert await c.fetchval(f"EXECUTE dump_q({oid})") == "docs"   # kept with its server
        await c.execute("DEALLOCATE dump_q")
    finally:
        await c.close()


def test_copy_to_stdout_on_every_shard(env):
    _, proxy = env
    with psycopg.connect(proxy.dsn(database="dump_src"), autocommit=True) as c:
        with c.cursor() as cur:
            rows = []
            with cur.copy("COPY accounts (id, owner) TO STDOUT") as copy:
                for row in copy.rows():
                    rows.append(row)
            assert sorted(int(r[0]) for r in rows) == list(range(1, 201))
            assert cur.rowcount == 200
            with cur.copy("COPY docs TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
                data = b"".join(bytes(b) for b in copy)
            lines = data.decode().splitlines()
            assert lines[0] == "code,body,tags" and lines.count("code,body,tags") == 1
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="binary COPY"):
                with cur.copy("COPY accounts TO STDOUT (FORMAT binary)") as copy:
                    list(copy)


def test_keyless_explain_shows_every_shard(env):
    _, proxy = env
    with psycopg.connect(proxy.dsn(database="dump_src"), autocommit=True) as c:
        lines = [r[0] for r in c.execute("EXPLAIN SELECT * FROM accounts WHERE owner = 'x'")]
        assert [ln for ln in lines if ln.startswith("Shard ")] == ["Shard shard0",
                                                                   "Shard shard1"]
        assert any("accounts" in ln for ln in lines)
        keyed = [r[0] for r in c.execute("EXPLAIN SELECT * FROM accounts WHERE id = 7")]
        assert not any(ln.startswith("Shard ") for ln in keyed)   # one shard: its own plan
        js = c.execute("EXPLAIN (FORMAT JSON) SELECT count(*) FROM docs").fetchall()
        assert len(js) == 2
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="EXPLAIN ANALYZE"):
            c.execute("EXPLAIN ANALYZE DELETE FROM accounts")
        assert c.execute("SELECT count(*) FROM accounts").fetchone()[0] == 200
        with pytest.raises(psycopg.errors.NoActiveSqlTransaction):
            c.execute("LOCK TABLE accounts")   # PostgreSQL's own error, as on one database


def test_pgshard_objects_are_protected(env):
    cluster, proxy = env
    with psycopg.connect(proxy.dsn(database="dump_src"), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="belongs to pgshard"):
            c.execute("DROP SCHEMA pgshard CASCADE")
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("GRANT USAGE ON SCHEMA pgshard TO PUBLIC")
        assert notices and "skipped GRANT" in notices[0]
        # a user's object that only uses pgshard's function is the user's: it runs
        c.execute("CREATE TABLE IF NOT EXISTS hashed (k text PRIMARY KEY, h bigint "
                  "DEFAULT pgshard.hash('x'))")
        assert set(_per_shard(cluster, "dump_src", "SELECT to_regclass('hashed') IS NOT "
                              "NULL").values()) == {"t"}
        c.execute("DROP TABLE hashed")   # undeclared: a later dump could not copy it


def test_copy_restricted_to_a_shards_ranges_runs_on_postgres(env):
    """While resharding, a shard answers a COPY … TO STDOUT only for the ranges it owns:
    the COPY is rewritten to COPY (SELECT … restricted); it runs as PostgreSQL reads it."""
    from pgshard.sql.copy_out import restricted
    from pgshard.sql.restrict import restrict

    cluster, _ = env
    node = cluster.shards[0].primary
    total = node.psql("SELECT count(*) FROM accounts", database="dump_src")
    for ranges, want in (("{(,)}", total), ("{}", "0")):
        sql = restricted("COPY public.accounts (id, owner) TO STDOUT WITH (FORMAT csv)",
                         lambda q, r=ranges: restrict(q, TABLES_KEYS.get, r))
        out = node.psql(sql, database="dump_src")
        assert sql.startswith("COPY (SELECT id, owner FROM (SELECT * FROM public.accounts "
                              "WHERE pgshard.hash(")
        assert str(len(out.splitlines()) if out else 0) == want


TABLES_KEYS = {"accounts": "id", "public.accounts": "id"}
