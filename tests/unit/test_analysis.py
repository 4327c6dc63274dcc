"""Statement analysis: kinds, shard keys, refusals and fan-out merge plans, as tables."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import parse_sql

from pgshard.protocol.errors import FeatureNotSupported, InvalidTextRepresentation
from pgshard.ring.hashing import INT4, INT8, TEXT, UUID
from pgshard.sql.analysis import Analysis, KeyRef, MergeSpec, analyze

TABLES = {"users": "id", "orders": "user_id", "accounts": "id", "app.items": "sku",
          "public.events": "tenant"}


def keys(a: Analysis):
    """Keys as short strings: '5', '$1', '$1::int8', "'5'::int4"."""
    if a.keys is None:
        return None
    return [(k.literal if k.param is None else f"${k.param}") + (f"::{k.cast}" if k.cast else "")
            for k in a.keys]


# (sql, kind, keys): keys None means no restriction (fan out a read, refuse a write).
KEY_CASES = [
    # plain equality, both sides, literals of every lexical kind
    ("SELECT * FROM users WHERE id = 42", "select", ["42"]),
    ("SELECT * FROM users WHERE 42 = id", "select", ["42"]),
    ("SELECT * FROM users WHERE id = 'abc'", "select", ["abc"]),
    ("SELECT * FROM users WHERE id = -5", "select", ["-5"]),
    ("SELECT * FROM users WHERE id = 10000000000000000000000", "select",
     ["10000000000000000000000"]),
    ("SELECT * FROM users WHERE id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid", "select",
     ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11::uuid"]),
    ("SELECT * FROM users WHERE id IS NOT DISTINCT FROM 7", "select", ["7"]),
    # literals whose key bytes would depend on the column's type are not keys
    ("SELECT * FROM users WHERE id = 5.0", "select", None),
    ("SELECT * FROM users WHERE id = 1e3", "select", None),
    ("SELECT * FROM users WHERE id = '0042'", "select", None),
    ("SELECT * FROM users WHERE id = ' 42'", "select", None),
    ("SELECT * FROM users WHERE id = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", "select", None),
    ("SELECT * FROM users WHERE id = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::uuid", "select",
     ["A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11::uuid"]),
    ("SELECT * FROM users WHERE id = '0042'::int8", "select", ["0042::int8"]),
    ("SELECT * FROM users WHERE id = '5'::numeric", "select", None),
    # parameters and casts
    ("SELECT * FROM users WHERE id = $1", "select", ["$1"]),
    ("SELECT * FROM users WHERE id = $1::bigint", "select", ["$1::int8"]),
    ("SELECT * FROM users WHERE id = CAST($2 AS integer)", "select", ["$2::int4"]),
    ("SELECT * FROM users WHERE id = '5'::int", "select", ["5::int4"]),
    ("SELECT * FROM users WHERE id = $1::text::int8", "select", None),
    ("SELECT * FROM users WHERE id::text = '5'", "select", None),
    # AND chains at any depth, qualified names, aliases
    ("SELECT * FROM users WHERE name = 'x' AND (age > 3 AND (id = 9 AND true))", "select",
     ["9"]),
    ("SELECT * FROM users u WHERE u.id = 3", "select", ["3"]),
    ("SELECT * FROM users WHERE users.id = 3", "select", ["3"]),
    ("SELECT * FROM public.users WHERE public.users.id = 7", "select", ["7"]),
    ("SELECT * FROM users u WHERE users.id = 3", "select", None),   # users is hidden by u
    ("SELECT * FROM users WHERE id = 5 AND id IN (5, 6)", "select", ["5"]),
    # IN, = ANY(ARRAY[…])
    ("SELECT * FROM users WHERE id IN (1, 2, '3')", "select", ["1", "2", "3"]),
    ("SELECT * FROM users WHERE id IN ($1, $2)", "select", ["$1", "$2"]),
    ("SELECT * FROM users WHERE id = ANY(ARRAY[1, 2])", "select", ["1", "2"]),
    ("SELECT * FROM users WHERE id = ANY($1)", "select", None),
    ("SELECT * FROM users WHERE id NOT IN (1, 2)", "select", None),
    ("SELECT * FROM users WHERE id IN (1, id + 1)", "select", None),
    # OR: a union when every branch pins, else nothing
    ("SELECT * FROM users WHERE id = 1 OR id = 2", "select", ["1", "2"]),
    ("SELECT * FROM users WHERE (id = 1 AND x = 2) OR id IN (3, 4)", "select",
     ["1", "3", "4"]),
    ("SELECT * FROM users WHERE id = 1 OR name = 'x'", "select", None),
    ("SELECT * FROM users WHERE NOT (id = 1)", "select", None),
    ("SELECT * FROM users WHERE id <> 1", "select", None),
    ("SELECT * FROM users WHERE id = NULL", "select", None),
    ("SELECT * FROM users WHERE id > 5", "select", None),
    ("SELECT * FROM users", "select", None),
    # joins on the key: one pin confines both; outer joins ignore pins in their ON
    ("SELECT * FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = $1::bigint",
     "select", ["$1::int8"]),
    ("SELECT * FROM users u, orders o WHERE u.id = o.user_id AND o.user_id = 9", "select",
     ["9"]),
    ("SELECT * FROM users JOIN accounts USING (id) WHERE id = 4", "select", ["4"]),
    ("SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id WHERE o.user_id = 5",
     "select", ["5"]),
    ("SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id AND o.user_id = 5",
     "select", None),
    ("SELECT * FROM users u JOIN orders o ON o.user_id = u.id AND o.user_id = 5", "select",
     ["5"]),
    ("SELECT * FROM users u JOIN orders o ON o.note = u.name WHERE u.id = 1", "select", None),
    ("SELECT * FROM users u JOIN orders o ON o.note = u.name WHERE u.id = 1 AND o.user_id = 1",
     "select", ["1"]),
    ("SELECT * FROM users u JOIN countries c ON c.code = u.country WHERE u.id = 2", "select",
     ["2"]),
    # subqueries: correlated on the key inherit the outer pin; never the reverse
    ("SELECT * FROM users WHERE id = 5 AND EXISTS "
     "(SELECT 1 FROM orders o WHERE o.user_id = users.id)", "select", ["5"]),
    ("SELECT * FROM users u WHERE NOT EXISTS "
     "(SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.user_id = 3)", "select", None),
    ("SELECT * FROM users WHERE id = 1 AND name IN (SELECT name FROM orders)", "select", None),
    ("SELECT * FROM users WHERE id = 1 AND name IN "
     "(SELECT name FROM orders WHERE user_id = 1)", "select", ["1"]),
    ("SELECT * FROM (SELECT * FROM users) s WHERE s.id = 5", "select", ["5"]),
    ("SELECT * FROM (SELECT id AS uid FROM users) s WHERE uid = 5", "select", ["5"]),
    ("SELECT * FROM (SELECT id FROM users LIMIT 10) s WHERE id = 5", "select", None),
    # CTEs
    ("WITH x AS (SELECT * FROM orders WHERE user_id = 5) "
     "SELECT * FROM x JOIN users ON users.id = x.user_id", "select", ["5"]),
    ("WITH x AS (SELECT * FROM orders) SELECT * FROM x WHERE x.user_id = 8", "select", ["8"]),
    ("WITH x AS (SELECT * FROM orders) SELECT * FROM users WHERE id = 1", "select", None),
    ("WITH users AS (SELECT 1 AS id) SELECT * FROM users WHERE id = 1", "select", None),
    ("WITH d AS (DELETE FROM orders WHERE user_id = 3 RETURNING *) SELECT * FROM d",
     "delete", ["3"]),
    # set operations
    ("SELECT * FROM users WHERE id = 5 UNION ALL SELECT * FROM users WHERE id = 6", "select",
     ["5", "6"]),
    ("SELECT * FROM users WHERE id = 5 UNION ALL SELECT * FROM users", "select", None),
    # FOR UPDATE
    ("SELECT * FROM users WHERE id = 5 FOR UPDATE", "select", ["5"]),
    # INSERT
    ("INSERT INTO users (id, name) VALUES (1, 'a')", "insert", ["1"]),
    ("INSERT INTO users (name, id) VALUES ($1, $2::bigint)", "insert", ["$2::int8"]),
    ("INSERT INTO users (id, name) VALUES (1, 'a'), (2, 'b'), (1, 'c')", "insert", ["1", "2"]),
    ("INSERT INTO users (id, name) VALUES ($1, $2) "
     "ON CONFLICT (id) DO UPDATE SET name = excluded.name", "insert", ["$1"]),
    ("INSERT INTO users (id) VALUES (1) ON CONFLICT DO NOTHING RETURNING id", "insert", ["1"]),
    ("INSERT INTO users (id) VALUES (DEFAULT)", "insert", None),
    ("INSERT INTO users (id) VALUES (nextval('s'))", "insert", None),
    ("INSERT INTO users VALUES (1, 'a')", "insert", None),          # no column list
    ("INSERT INTO users (name, id) SELECT 'x', 8", "insert", ["8"]),
    ("INSERT INTO orders (user_id, total) SELECT id, 0 FROM users WHERE id = 4", "insert",
     ["4"]),
    ("INSERT INTO orders (user_id) SELECT id FROM users", "insert", None),
    ("INSERT INTO app.items (sku, n) VALUES ('s-1', 1)", "insert", ["s-1"]),
    # UPDATE / DELETE
    ("UPDATE users SET name = 'x' WHERE id = 3", "update", ["3"]),
    ("UPDATE users u SET name = 'x' WHERE u.id = $1 AND u.name <> 'x'", "update", ["$1"]),
    ("UPDATE users SET name = 'x' FROM orders "
     "WHERE orders.user_id = users.id AND orders.user_id = 3", "update", ["3"]),
    ("UPDATE users SET name = 'x'", "update", None),
    ("DELETE FROM orders WHERE user_id = 7 RETURNING *", "delete", ["7"]),
    ("DELETE FROM users USING orders WHERE orders.user_id = users.id AND orders.user_id = 2",
     "delete", ["2"]),
    ("DELETE FROM users WHERE CURRENT OF c", "delete", None),
    # schemas: unqualified means public, like the catalog
    ("SELECT * FROM events WHERE tenant = 't1'", "select", ["t1"]),
    ("SELECT * FROM public.events WHERE tenant = 't1'", "select", ["t1"]),
    ("SELECT * FROM app.items WHERE sku = 'a'", "select", ["a"]),
    # comments and hints do not disturb the parse
    ("/* shard_key: 42 */ SELECT * FROM users WHERE id = 1", "select", ["1"]),
    ("SELECT /* c */ * FROM users -- note\nWHERE id = 1 /* shard: s1 */", "select", ["1"]),
    # multi-statement strings: keys only when every statement agrees
    ("BEGIN; UPDATE users SET name = 'x' WHERE id = 3; COMMIT", "update", ["3"]),
    ("SELECT * FROM users WHERE id = 1; SELECT * FROM orders WHERE user_id = 1", "select",
     ["1"]),
    ("SELECT * FROM users WHERE id = 1; SELECT * FROM orders WHERE user_id = 2", "select",
     None),
    ("INSERT INTO users (id) VALUES (1); UPDATE users SET n = 1 WHERE id = 1", "other", ["1"]),
    # statements on unsharded tables only
    ("SELECT * FROM countries WHERE id = 1", "select", None),
    ("INSERT INTO logs (msg) VALUES ('x')", "insert", None),
    ("SELECT 1", "select", None),
    # other statements
    ("EXPLAIN SELECT * FROM users WHERE id = 1", "explain", ["1"]),
    ("COPY (SELECT * FROM users WHERE id = 1) TO STDOUT", "other", ["1"]),
    ("COPY users FROM STDIN", "other", None),
    ("MERGE INTO users u USING orders o ON u.id = o.user_id WHEN MATCHED THEN DO NOTHING",
     "other", None),
    ("DO $$ BEGIN END $$", "other", None),
]


@pytest.mark.parametrize("sql,kind,expected", KEY_CASES, ids=[c[0][:60] for c in KEY_CASES])
def test_kind_and_keys(sql, kind, expected):
    a = analyze(sql, TABLES)
    assert a.kind == kind
    assert keys(a) == expected


CLASSIFY_CASES = [
    ("CREATE TABLE users (id int PRIMARY KEY)", "ddl", ("users",)),
    ("CREATE TABLE t2 AS SELECT * FROM users", "ddl", ("users",)),
    ("SELECT * INTO t2 FROM users", "ddl", ("users",)),
    ("ALTER TABLE users ADD COLUMN x int", "ddl", ("users",)),
    ("DROP TABLE users, countries", "ddl", ()),    # DropStmt names objects, not RangeVars
    ("CREATE INDEX ON users (name)", "ddl", ("users",)),
    ("DROP INDEX users_name_idx", "ddl", ()),
    ("CREATE SEQUENCE s", "ddl", ()),
    ("CREATE TYPE mood AS ENUM ('a', 'b')", "ddl", ()),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "ddl", ()),
    ("CREATE EXTENSION IF NOT EXISTS pgcrypto", "ddl", ()),
    ("CREATE SCHEMA app", "ddl", ()),
    ("CREATE VIEW v AS SELECT * FROM users", "ddl", ("users",)),
    ("TRUNCATE users", "ddl", ("users",)),
    ("COMMENT ON TABLE users IS 'x'", "ddl", ()),
    ("GRANT SELECT ON users TO bob", "ddl", ("users",)),
    ("REVOKE ALL ON users FROM bob", "ddl", ("users",)),
    ("VACUUM ANALYZE users", "ddl", ("users",)),
    ("SET search_path = app, public", "utility", ()),
    ("SET LOCAL statement_timeout = 0", "utility", ()),
    ("SHOW search_path", "utility", ()),
    ("RESET ALL", "utility", ()),
    ("DISCARD ALL", "utility", ()),
    ("LISTEN chan", "utility", ()),
    ("NOTIFY chan, 'x'", "utility", ()),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", "utility", ()),
    ("COMMIT", "utility", ()),
    ("SAVEPOINT a", "utility", ()),
    ("DEALLOCATE ALL", "utility", ()),
    ("BEGIN; COMMIT", "utility", ()),
    ("", "utility", ()),
    ("LOCK TABLE users", "lock", ("users",)),
    ("selec * from users", "unparsed", ()),
    ("SELECT * FROM users WHERE", "unparsed", ()),
    ("SELECT 'unterminated", "unparsed", ()),
    ("SELECT * FROM users WHERE id = 1; garbage", "unparsed", ()),
]


@pytest.mark.parametrize("sql,kind,tables", CLASSIFY_CASES, ids=[c[0][:60] for c in CLASSIFY_CASES])
def test_classification(sql, kind, tables):
    a = analyze(sql, TABLES)
    assert (a.kind, a.tables) == (kind, tables)
    if kind in ("ddl", "utility", "unparsed"):
        assert a.keys is None and a.merge is None


REFUSE_CASES = [
    ("SELECT * FROM users", None),
    ("SELECT * FROM users u JOIN orders o ON o.user_id = u.id", None),
    ("SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders WHERE user_id = u.id)", None),
    ("SELECT u.id, (SELECT count(*) FROM orders o WHERE o.user_id = u.id) FROM users u", None),
    ("SELECT * FROM users u JOIN LATERAL "
     "(SELECT * FROM orders o WHERE o.user_id = u.id LIMIT 3) x ON true", None),
    ("SELECT * FROM users u JOIN countries c ON c.code = u.country", None),
    ("WITH x AS (SELECT * FROM orders) SELECT count(*) FROM x", None),
    ("SELECT id FROM users UNION ALL SELECT user_id FROM orders", None),
    ("SELECT * FROM users u JOIN orders o ON o.note = u.name", "joined or nested"),
    ("SELECT * FROM users u JOIN orders o USING (id)", "joined or nested"),
    ("SELECT (SELECT count(*) FROM orders) FROM users", "joined or nested"),
    ("SELECT * FROM users WHERE id = (SELECT max(user_id) FROM orders)", "joined or nested"),
    ("SELECT * FROM (SELECT id FROM users LIMIT 10) s", "subquery in FROM"),
    ("WITH x AS (SELECT user_id, count(*) c FROM orders GROUP BY user_id) SELECT * FROM x",
     "CTE x"),
    ("SELECT row_number() OVER (ORDER BY id) FROM users", "window"),
    ("SELECT * FROM users FOR UPDATE", "FOR UPDATE"),
    ("SELECT * FROM users WHERE id = 1 FOR SHARE", "FOR UPDATE"),
    ("SELECT count(DISTINCT name) FROM users", "DISTINCT"),
    ("SELECT string_agg(name, ',') FROM users", "string_agg"),
    ("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY age) FROM users", "percentile_cont"),
    ("SELECT sum(age) + 1 FROM users", "expression over aggregate"),
    ("SELECT DISTINCT ON (name) * FROM users", "DISTINCT ON"),
    ("SELECT name, count(*) FROM users GROUP BY name HAVING count(*) > 1", "HAVING"),
    ("SELECT name, count(*) FROM users GROUP BY ROLLUP (name)", "ROLLUP"),
    ("SELECT * FROM users LIMIT $1", "LIMIT"),
    ("SELECT * FROM users ORDER BY id OFFSET $1", "OFFSET"),
    ("SELECT * FROM users ORDER BY id FETCH FIRST 3 ROWS WITH TIES", "WITH TIES"),
    ("SELECT * FROM users ORDER BY name USING <", "USING"),
    ("SELECT * FROM users ORDER BY 2", "position"),
    ("SELECT id FROM users INTERSECT SELECT user_id FROM orders", "INTERSECT"),
    ("SELECT id FROM users UNION ALL (SELECT id FROM users LIMIT 1)", "UNION arm"),
    ("SELECT id FROM users UNION ALL (SELECT id FROM users UNION SELECT 1)", "UNION"),
    ("SELECT id FROM users UNION ALL SELECT id FROM users ORDER BY lower(name)",
     "output column"),
    ("COPY users TO '/tmp/users.txt'", "COPY"),   # a server file on each shard
    ("SELECT * FROM users WHERE id = 1; SELECT * FROM users", "several statements"),
]


@pytest.mark.parametrize("sql,reason", REFUSE_CASES, ids=[c[0][:60] for c in REFUSE_CASES])
def test_refusals(sql, reason):
    a = analyze(sql, TABLES)
    if reason is None:
        assert a.refuse is None
        assert a.merge is not None
    else:
        assert a.refuse is not None and reason in a.refuse, a.refuse
        if a.kind == "select":
            assert a.merge is None


# (sql, MergeSpec, shard SQL or None when the statement runs unchanged)
MERGE_CASES = [
    ("SELECT * FROM users", MergeSpec(), None),
    ("SELECT id, name FROM users ORDER BY name DESC, id",
     MergeSpec(order_by=((1, True, None), (0, False, None))), None),
    ("SELECT id, name AS n FROM users ORDER BY n NULLS FIRST, 1 DESC NULLS LAST",
     MergeSpec(order_by=((1, False, True), (0, True, False))), None),
    ("SELECT id, lower(name) FROM users ORDER BY lower(name)",
     MergeSpec(order_by=((1, False, None),)), None),
    ("SELECT id FROM users ORDER BY created_at DESC",
     MergeSpec(order_by=((1, True, None),), hidden=1),
     "SELECT id, created_at FROM users ORDER BY created_at DESC"),
    ("SELECT * FROM users ORDER BY name",
     MergeSpec(order_by=((-1, False, None),), hidden=1),
     "SELECT *, name FROM users ORDER BY name"),
    ("SELECT id, * FROM users ORDER BY id", MergeSpec(order_by=((0, False, None),)), None),
    ("SELECT *, age FROM users ORDER BY age", MergeSpec(order_by=((-1, False, None),)), None),
    ("SELECT id FROM users ORDER BY id LIMIT 10",
     MergeSpec(order_by=((0, False, None),), limit=10), None),
    ("SELECT id FROM users ORDER BY id LIMIT 10 OFFSET 20",
     MergeSpec(order_by=((0, False, None),), limit=10, offset=20),
     "SELECT id FROM users ORDER BY id LIMIT 30"),
    ("SELECT id FROM users ORDER BY id OFFSET 5 ROWS FETCH FIRST 2 ROWS ONLY",
     MergeSpec(order_by=((0, False, None),), limit=2, offset=5),
     "SELECT id FROM users ORDER BY id LIMIT 7"),
    ("SELECT id FROM users OFFSET 5", MergeSpec(offset=5), "SELECT id FROM users"),
    ("SELECT id FROM users LIMIT ALL", MergeSpec(), None),
    ("SELECT DISTINCT name FROM users", MergeSpec(distinct=True), None),
    ("SELECT DISTINCT name FROM users ORDER BY name LIMIT 3",
     MergeSpec(order_by=((0, False, None),), limit=3, distinct=True), None),
    ("SELECT count(*) FROM users", MergeSpec(aggregates=((0, "count"),)), None),
    ("SELECT count(*) FROM users LIMIT 1 OFFSET 0",
     MergeSpec(aggregates=((0, "count"),), limit=1),
     "SELECT count(*) FROM users"),
    ("SELECT count(*), sum(age), min(name), max(age) FROM users",
     MergeSpec(aggregates=((0, "count"), (1, "sum"), (2, "min"), (3, "max"))), None),
    ("SELECT avg(age) FROM users",
     MergeSpec(aggregates=((0, "avg"), (1, "sum"), (2, "count")), avg_parts=((0, 1, 2),),
               hidden=2),
     "SELECT avg(age), sum(age), count(age) FROM users"),
    ("SELECT avg(age) FILTER (WHERE age > 3) FROM users",
     MergeSpec(aggregates=((0, "avg"), (1, "sum"), (2, "count")), avg_parts=((0, 1, 2),),
               hidden=2),
     "SELECT avg(age) FILTER (WHERE age > 3), sum(age) FILTER (WHERE age > 3), "
     "count(age) FILTER (WHERE age > 3) FROM users"),
    ("SELECT user_id, count(*) c FROM orders GROUP BY user_id ORDER BY c DESC LIMIT 10 OFFSET 5",
     MergeSpec(order_by=((1, True, None),), limit=10, offset=5, group_by=(0,),
               aggregates=((1, "count"),)),
     "SELECT user_id, count(*) AS c FROM orders GROUP BY user_id"),
    ("SELECT status, count(*) FROM orders GROUP BY 1 ORDER BY 2 DESC, 1",
     MergeSpec(order_by=((1, True, None), (0, False, None)), group_by=(0,),
               aggregates=((1, "count"),)),
     "SELECT status, count(*) FROM orders GROUP BY 1"),
    ("SELECT count(*) FROM orders GROUP BY status",
     MergeSpec(group_by=(1,), aggregates=((0, "count"),), hidden=1),
     "SELECT count(*), status FROM orders GROUP BY status"),
    ("SELECT status FROM orders GROUP BY status", MergeSpec(group_by=(0,)), None),
    ("SELECT status, sum(total) FROM orders GROUP BY status ORDER BY max(total) DESC",
     MergeSpec(order_by=((2, True, None),), group_by=(0,),
               aggregates=((1, "sum"), (2, "max")), hidden=1),
     "SELECT status, sum(total), max(total) FROM orders GROUP BY status"),
    ("SELECT status, avg(total) FROM orders GROUP BY status ORDER BY avg(total)",
     MergeSpec(order_by=((1, False, None),), group_by=(0,),
               aggregates=((1, "avg"), (2, "sum"), (3, "count")), avg_parts=((1, 2, 3),),
               hidden=2),
     "SELECT status, avg(total), sum(total), count(total) FROM orders GROUP BY status"),
    ("SELECT DISTINCT count(*) FROM orders GROUP BY status",
     MergeSpec(group_by=(1,), aggregates=((0, "count"),), hidden=1, distinct=True),
     "SELECT DISTINCT count(*), status FROM orders GROUP BY status"),
    ("SELECT id FROM users UNION ALL SELECT user_id FROM orders ORDER BY 1 LIMIT 5 OFFSET 5",
     MergeSpec(order_by=((0, False, None),), limit=5, offset=5),
     "SELECT id FROM users UNION ALL SELECT user_id FROM orders ORDER BY 1 LIMIT 10"),
    ("SELECT name FROM users UNION SELECT note FROM orders ORDER BY name DESC",
     MergeSpec(order_by=((0, True, None),), distinct=True), None),
    ("SELECT u.name, o.total FROM users u JOIN orders o ON o.user_id = u.id ORDER BY o.total",
     MergeSpec(order_by=((1, False, None),)), None),
    ("SELECT * FROM users WHERE id IN (1, 2) ORDER BY id",
     MergeSpec(order_by=((-1, False, None),), hidden=1),
     "SELECT *, id FROM users WHERE id IN (1, 2) ORDER BY id"),
]


@pytest.mark.parametrize("sql,spec,shard_sql", MERGE_CASES, ids=[c[0][:60] for c in MERGE_CASES])
def test_merge_plans(sql, spec, shard_sql):
    a = analyze(sql, TABLES)
    assert a.refuse is None
    assert a.merge == spec
    assert a.shard_sql == shard_sql
    if shard_sql is not None:
        parse_sql(shard_sql)


# Statements PostgreSQL rejects run unchanged (the shards report their own error, as one
# database would); the merge refuses should a shard accept one after all.
INVALID_CASES = [
    ("SELECT id, name FROM users ORDER BY 5", "position 5"),
    ("SELECT id FROM users ORDER BY 0", "position 0"),
    ("SELECT name, count(*) FROM users GROUP BY 3", "position 3"),
    ("SELECT id FROM users ORDER BY id LIMIT -1", "LIMIT must not be negative"),
    ("SELECT id FROM users ORDER BY id OFFSET -2", "OFFSET must not be negative"),
    ("SELECT DISTINCT name FROM users ORDER BY id", "SELECT DISTINCT"),
    ("SELECT DISTINCT name, count(*) FROM users GROUP BY name ORDER BY max(age)",
     "SELECT DISTINCT"),
    ("SELECT id FROM users UNION SELECT user_id FROM orders LIMIT -3",
     "LIMIT must not be negative"),
]


@pytest.mark.parametrize("sql,reason", INVALID_CASES, ids=[c[0][:60] for c in INVALID_CASES])
def test_statements_postgres_rejects_run_unchanged(sql, reason):
    a = analyze(sql, TABLES)
    assert a.refuse is None
    assert a.shard_sql is None
    assert a.merge is not None and reason in a.merge.unmergeable


def test_insert_rows_split_multi_row_values():
    a = analyze("INSERT INTO users (id, name) VALUES (1, 'a'), ($1, 'b'), (1, 'c')", TABLES)
    assert a.insert_rows == ((KeyRef("1"), 0), (KeyRef(param=1), 1), (KeyRef("1"), 2))
    assert a.keys == (KeyRef("1"), KeyRef(param=1))
    assert analyze("INSERT INTO users (id) VALUES (1)", TABLES).insert_rows is None
    # one row without a usable key: no split at all
    assert analyze("INSERT INTO users (id) VALUES (1), (DEFAULT)", TABLES).insert_rows is None
    # rows of an INSERT inside a CTE are not the statement's rows to split
    a = analyze("WITH x AS (INSERT INTO users (id) VALUES (1), (2) RETURNING id) "
                "INSERT INTO orders (user_id) VALUES (1)", TABLES)
    assert a.kind == "insert" and a.insert_rows is None and keys(a) == ["1", "2"]


@pytest.mark.parametrize("sql,expected", [
    ("UPDATE users SET id = 5 WHERE id = 4", True),
    ("UPDATE users SET (name, id) = ('a', 5) WHERE id = 5", True),
    ("UPDATE users u SET name = 'x' WHERE u.id = 4", False),
    ("UPDATE orders SET id = 3 WHERE user_id = 4", False),       # id is not orders' key
    ("INSERT INTO users (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = 2", True),
    ("INSERT INTO users (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET n = 2", False),
    ("WITH u AS (UPDATE users SET id = 1 WHERE id = 2 RETURNING *) SELECT * FROM u", True),
])
def test_updates_key(sql, expected):
    assert analyze(sql, TABLES).updates_key is expected


def test_locking_flag():
    assert analyze("SELECT * FROM users WHERE id = 1 FOR UPDATE", TABLES).locking
    assert analyze("SELECT * FROM users FOR NO KEY UPDATE SKIP LOCKED", TABLES).locking
    assert not analyze("SELECT * FROM users WHERE id = 1", TABLES).locking
    assert not analyze("SELECT * FROM countries FOR UPDATE", TABLES).locking


def test_tables_are_catalog_names_in_order_of_appearance():
    a = analyze("SELECT * FROM orders o JOIN Users u ON u.id = o.user_id "
                "JOIN public.users v ON v.id = u.id JOIN countries c ON true", TABLES)
    assert a.tables == ("orders", "users")
    assert analyze("SELECT * FROM app.items", TABLES).tables == ("app.items",)
    assert analyze("SELECT * FROM items", TABLES).tables == ()
    # the mapping may name a table with or without public., in any case
    assert analyze("SELECT * FROM t WHERE k = 1", {"PUBLIC.T": "k"}).tables == ("t",)


def test_cached_per_text_and_tables():
    sql = "SELECT * FROM users WHERE id = $1"
    assert analyze(sql, TABLES) is analyze(sql, dict(TABLES))
    assert analyze(sql, {"users": "name"}).keys is None
    pairs = tuple(sorted(TABLES.items()))
    assert analyze(sql, pairs) == analyze(sql, TABLES)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("SELECT*FROMusersWHEREid=1$()'; ,.\"ORAND")),
               max_size=60))
def test_never_raises(sql):
    a = analyze(sql, TABLES)
    assert a.kind in ("select", "insert", "update", "delete", "ddl", "utility", "other",
                      "unparsed")
    assert not (a.refuse or "").startswith("statement analysis failed"), a.refuse


def test_deep_nesting_is_unparsed_not_an_exception():
    sql = "SELECT " + "(" * 5000 + "1" + ")" * 5000
    assert analyze(sql, TABLES).kind in ("unparsed", "select")


# -- KeyRef.resolve --------------------------------------------------------------------

@pytest.mark.parametrize("ref,params,formats,oids,kind,expected", [
    (KeyRef("42"), (), (), (), "auto", b"42"),
    (KeyRef("abc"), (), (), (), "auto", b"abc"),
    (KeyRef("007", cast="int4"), (), (), (), "auto", b"7"),
    (KeyRef("007"), (), (), (), "int", b"7"),
    (KeyRef("007"), (), (), (), "auto", b"007"),
    (KeyRef("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", cast="uuid"), (), (), (), "auto",
     b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    (KeyRef(param=1), (b"42",), (), (), "auto", b"42"),
    (KeyRef(param=2), (b"x", b"\x00\x00\x00\x2a"), (0, 1), (TEXT, INT4), "auto", b"42"),
    (KeyRef(param=1), (b"\x00\x00\x00\x00\x00\x00\x00\x2a",), (1,), (INT8,), "auto", b"42"),
    (KeyRef(param=1, cast="int8"), (b"\x00\x00\x00\x00\x00\x00\x00\x2a",), (1,), (0,), "auto",
     b"42"),
    (KeyRef(param=1, cast="int8"), (b"0042",), (), (0,), "auto", b"42"),
    (KeyRef(param=1), (b"0042",), (0,), (0,), "int", b"42"),
    (KeyRef(param=1), (b"0042",), (0,), (0,), "auto", b"0042"),
    (KeyRef(param=1), (bytes(range(16)),), (1,), (UUID,), "auto",
     b"00010203-0405-0607-0809-0a0b0c0d0e0f"),
])
def test_keyref_resolve(ref, params, formats, oids, kind, expected):
    assert ref.resolve(params, formats, oids, kind=kind) == expected


def test_keyref_resolve_errors():
    with pytest.raises(InvalidTextRepresentation):
        KeyRef(param=3).resolve((b"1",), (), ())
    with pytest.raises(InvalidTextRepresentation):
        KeyRef(param=1).resolve((None,), (), ())
    with pytest.raises(InvalidTextRepresentation):
        KeyRef("x1", cast="int8").resolve()
    with pytest.raises(FeatureNotSupported):
        KeyRef("1.5", cast="numeric").resolve()


def test_keys_resolve_end_to_end():
    a = analyze("SELECT * FROM users WHERE id IN ($1::bigint, 7)", TABLES)
    assert [k.resolve((b"\x00" * 7 + b"\x05",), (1,), (0,)) for k in a.keys] == [b"5", b"7"]


def test_insert_select_from_values_is_keyed():
    """SQLAlchemy's insertmanyvalues form: the keys are the VALUES rows'."""
    from pgshard.sql import analysis as sp
    sql = ("INSERT INTO items (tenant_id, name) SELECT p0::INTEGER, p1::VARCHAR FROM "
           "(VALUES ($1, $2, 0), ($3, $4, 1)) AS imp_sen(p0, p1, sen_counter) "
           "ORDER BY sen_counter RETURNING items.id")
    a = sp.analyze(sql, {"items": "tenant_id"})
    assert [k.param for k in a.keys] == [1, 3]
    a = sp.analyze(sql.replace("$3", "now()"), {"items": "tenant_id"})
    assert a.keys is None
