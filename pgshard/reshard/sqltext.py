"""SQL text the resharding steps send, pure: identifiers, token-range predicates, and the
statements that copy, apply, verify and delete rows of a set of token ranges."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from pgshard.ring.ring import TokenSpan


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def qualified(table: str) -> str:
    """A catalog table name (optionally schema-qualified, case as PostgreSQL folds it)."""
    schema, _, name = table.rpartition(".")
    return (ident(schema.lower()) + "." if schema else "") + ident(name.lower())


def split_name(table: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    return (schema or "public").lower(), name.lower()


def multirange(spans: Iterable[TokenSpan]) -> str:
    """The spans as an int8multirange literal: tokens t with lo < t <= hi."""
    return literal("{" + ",".join(f"({s.lo},{s.hi}]" for s in spans) + "}") + "::int8multirange"


def token_of(key_column: str) -> str:
    """The token of a row, as routers compute it (the key's text form hashed)."""
    return f"pgshard.hash(({ident(key_column)})::text)"


def in_ranges(key_column: str, spans: Iterable[TokenSpan]) -> str:
    return f"{token_of(key_column)} <@ {multirange(spans)}"


def column_list(columns: Sequence[str]) -> str:
    return ", ".join(ident(c) for c in columns)


def in_ranges_indexed(key_column: str, spans: Iterable[TokenSpan]) -> str:
    """in_ranges as range conditions a token index answers (a bitmap scan, no hash)."""
    return " OR ".join(f"({token_of(key_column)} > {s.lo} AND {token_of(key_column)} <= {s.hi})"
                       for s in spans)


def select_ranges(table: str, columns: Sequence[str], key: str, spans,
                  indexed: bool = False) -> str:
    """The rows of the spans (what the copy sends, COPY (…) TO STDOUT); indexed: as range
    conditions a token index answers (a bitmap scan that hashes no key)."""
    where = in_ranges(key, spans) if not indexed else in_ranges_indexed(key, spans)
    return f"SELECT {column_list(columns)} FROM {qualified(table)} WHERE {where}"


def delete_ranges(table: str, key: str, spans) -> str:
    return f"DELETE FROM {qualified(table)} WHERE {in_ranges(key, spans)}"


def delete_ranges_indexed(table: str, key: str, spans) -> str:
    """One cleanup batch through the job's token index (run with sequential scans off)."""
    return f"DELETE FROM {qualified(table)} WHERE {in_ranges_indexed(key, spans)}"


def delete_ranges_in_pages(table: str, key: str, spans, first_page: int, end_page: int) -> str:
    """One cleanup batch: the range's rows among pages [first_page, end_page) (a TID range
    scan, so each batch reads only its own pages)."""
    return (f"DELETE FROM {qualified(table)} WHERE ctid >= '({first_page},0)'::tid "
            f"AND ctid < '({end_page},0)'::tid AND {in_ranges(key, spans)}")


def checksum(table: str, columns: Sequence[str], key: str, spans: Sequence[TokenSpan]) -> str:
    """Per range (numbered from 1 by ascending lo): row count and an order-independent sum
    of each row's hash. OFFSET 0 keeps the token computed once per row."""
    lows = "ARRAY[" + ",".join(str(s.lo + 1) for s in spans) + "]::bigint[]"
    row = f"ROW({column_list(columns)})::text"
    return (f"SELECT width_bucket(t, {lows}) AS r, count(*), "
            f"coalesce(sum(hashtextextended(x, 0)::numeric), 0)::text "
            f"FROM (SELECT {token_of(key)} AS t, {row} AS x FROM {qualified(table)} "
            f"OFFSET 0) s WHERE t <@ {multirange(spans)} GROUP BY 1 ORDER BY 1")


def checksum_total(table: str, columns: Sequence[str], key: str,
                   spans: Sequence[TokenSpan] | None, indexed: bool) -> str:
    """checksum() over all the spans at once, in one pass over the table: row count and the
    sum of each row's hash. indexed: through the job's token index (a bitmap scan, no hash
    computed per row; run with sequential scans off), else hashing each row's key; spans
    None: the whole table."""
    row = f"ROW({column_list(columns)})::text"
    sql = (f"SELECT count(*), coalesce(sum(hashtextextended({row}, 0)::numeric), 0)::text "
           f"FROM {qualified(table)}")
    if spans is None:
        return sql
    return sql + " WHERE " + (in_ranges_indexed(key, spans) if indexed
                              else in_ranges(key, spans))


def upsert(table: str, columns: Sequence[str], types: Sequence[str], pk: Sequence[str]) -> str:
    """INSERT a whole row, or overwrite the row with its primary key: parameters are the
    columns' text forms, cast to each column's type."""
    values = ", ".join(f"${i + 1}::text::{t}" for i, t in enumerate(types))
    others = [c for c in columns if c not in pk]
    action = ("DO UPDATE SET " + ", ".join(f"{ident(c)} = EXCLUDED.{ident(c)}" for c in others)
              if others else "DO NOTHING")
    return (f"INSERT INTO {qualified(table)} ({column_list(columns)}) VALUES ({values}) "
            f"ON CONFLICT ({column_list(pk)}) {action}")


def update_columns(table: str, columns: Sequence[str], types: Sequence[str],
                   pk: Sequence[str], pk_types: Sequence[str]) -> str:
    """UPDATE some columns of the row with a primary key (pk parameters come first)."""
    n = len(pk)
    where = " AND ".join(f"{ident(c)} = ${i + 1}::text::{t}"
                         for i, (c, t) in enumerate(zip(pk, pk_types, strict=True)))
    sets = ", ".join(f"{ident(c)} = ${n + i + 1}::text::{t}"
                     for i, (c, t) in enumerate(zip(columns, types, strict=True)))
    return f"UPDATE {qualified(table)} SET {sets} WHERE {where}"


def delete_key(table: str, pk: Sequence[str], pk_types: Sequence[str]) -> str:
    where = " AND ".join(f"{ident(c)} = ${i + 1}::text::{t}"
                         for i, (c, t) in enumerate(zip(pk, pk_types, strict=True)))
    return f"DELETE FROM {qualified(table)} WHERE {where}"


def guard_name(job_id: str) -> str:
    return f"pgshard_guard_{job_id}"


def guard_function(job_id: str, spans) -> str:
    """The guard's trigger function on one source, its ranges a constant of the function (so
    they are parsed once per session, not per row), bypassed by the job's own deletes."""
    ranges = multirange(spans)
    return f"""\
CREATE OR REPLACE FUNCTION pgshard.{ident(guard_name(job_id))}() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF current_setting('pgshard.reshard_bypass', true) = 'on' THEN
        RETURN COALESCE(NEW, OLD);
    END IF;
    IF (TG_OP <> 'INSERT' AND pgshard.hash(to_jsonb(OLD) ->> TG_ARGV[0]) <@ {ranges})
       OR (TG_OP <> 'DELETE' AND pgshard.hash(to_jsonb(NEW) ->> TG_ARGV[0]) <@ {ranges}) THEN
        RAISE EXCEPTION 'this row''s shard key range is being moved to another shard by '
                        'resharding job {job_id}'
            USING ERRCODE = '40001',
                  HINT = 'retry the transaction: it will be routed to the range''s new owner';
    END IF;
    RETURN COALESCE(NEW, OLD);
END
$fn$"""


def create_guard(table: str, key: str, job_id: str) -> str:
    """A trigger on the source refusing writes to the moving ranges (40001), so that no
    router serving an old catalog can write a row there once the final catch-up began."""
    # The bypass is tested in WHEN too: the cleanup's deletes then call no function per row.
    return (f"CREATE TRIGGER {ident(guard_name(job_id))} BEFORE INSERT OR UPDATE OR DELETE "
            f"ON {qualified(table)} FOR EACH ROW "
            "WHEN (current_setting('pgshard.reshard_bypass', true) IS DISTINCT FROM 'on') "
            "EXECUTE FUNCTION "
            f"pgshard.{ident(guard_name(job_id))}({literal(key)})")


def drop_guard_function(job_id: str) -> str:
    return f"DROP FUNCTION IF EXISTS pgshard.{ident(guard_name(job_id))}()"


def drop_guard(table: str, job_id: str) -> str:
    return f"DROP TRIGGER IF EXISTS {ident(guard_name(job_id))} ON {qualified(table)}"


def token_index_name(job_id: str, table: str) -> str:
    return f"pgshard_tok_{job_id}_{hashlib.md5(table.lower().encode()).hexdigest()[:8]}"


def create_token_index(table: str, key: str, job_id: str) -> str:
    """An expression index on the rows' tokens, so that verifying a range inside the fence
    reads only its rows and computes no hash."""
    return (f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {ident(token_index_name(job_id, table))} "
            f"ON {qualified(table)} ({token_of(key)})")


def drop_token_index(table: str, job_id: str) -> str:
    schema, _ = split_name(table)
    return (f"DROP INDEX CONCURRENTLY IF EXISTS {ident(schema)}."
            f"{ident(token_index_name(job_id, table))}")


def checksum_by_index(table: str, columns: Sequence[str], key: str,
                      spans: Sequence[TokenSpan]) -> str:
    """checksum() through the token index: one index range scan per range (run with
    sequential scans and the other join methods off), no hash computed per row."""
    los = "ARRAY[" + ",".join(str(s.lo) for s in spans) + "]::bigint[]"
    his = "ARRAY[" + ",".join(str(s.hi) for s in spans) + "]::bigint[]"
    row = "ROW(" + ", ".join(f"t.{ident(c)}" for c in columns) + ")::text"
    return (f"SELECT r.i::int, count(*), "
            f"coalesce(sum(hashtextextended({row}, 0)::numeric), 0)::text "
            f"FROM unnest({los}, {his}) WITH ORDINALITY AS r(lo, hi, i) "
            f"JOIN LATERAL (SELECT * FROM {qualified(table)} WHERE {token_of(key)} > r.lo "
            f"AND {token_of(key)} <= r.hi) t ON true GROUP BY r.i ORDER BY r.i")


def rows_by_key(table: str, columns: Sequence[str], pk: Sequence[str],
                pk_types: Sequence[str]) -> str:
    """(position in the key arrays, the row as text) of the rows with those primary keys;
    one text[] parameter per key column."""
    arrays = ", ".join(f"${i + 1}::text[]" for i in range(len(pk)))
    names = ", ".join(f"k{i}" for i in range(len(pk)))
    join = " AND ".join(f"t.{ident(c)} = k.k{i}::{typ}"
                        for i, (c, typ) in enumerate(zip(pk, pk_types, strict=True)))
    row = "ROW(" + ", ".join(f"t.{ident(c)}" for c in columns) + ")::text"
    return (f"SELECT k.i::int, {row} FROM unnest({arrays}) WITH ORDINALITY AS k({names}, i) "
            f"JOIN {qualified(table)} t ON {join}")
