"""What resharding needs to know of each sharded table (columns, types, primary key), the
precondition that the primary key contains the shard key, and the copy of a table's
definition to a shard that lacks it."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from pgshard.cluster.schema import hash_sql
from pgshard.reshard import sqltext as q
from pgshard.reshard.job import JobError

COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, a.attgenerated::text
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum"""
PRIMARY_KEY = """
SELECT a.attname FROM pg_index i
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY k.n"""
CONSTRAINTS = """
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = $1::regclass AND contype IN ('p', 'u', 'c', 'x') ORDER BY contype = 'p' DESC, conname"""
INDEXES = """
SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
WHERE i.indrelid = $1::regclass
  AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)"""


@dataclass(frozen=True)
class TableInfo:
    """A sharded table as the source defines it."""

    name: str                    # as the catalog names it
    key: str                     # the shard key column
    columns: tuple[str, ...]     # insertable columns, in table order
    types: tuple[str, ...]       # format_type of each column
    pk: tuple[str, ...]

    def type_of(self, column: str) -> str:
        return self.types[self.columns.index(column)]

    @property
    def pk_types(self) -> tuple[str, ...]:
        return tuple(self.type_of(c) for c in self.pk)


async def exists(conn: asyncpg.Connection, table: str) -> bool:
    return await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", q.qualified(table))


async def describe(conn: asyncpg.Connection, table: str, key: str, where: str) -> TableInfo:
    """The table's columns and primary key; JobError naming the table unless the primary key
    contains the shard key (rows could not be applied or verified by key otherwise)."""
    if not await exists(conn, table):
        raise JobError(f'sharded table "{table}" does not exist on shard {where}')
    rel = q.qualified(table)
    cols = [r for r in await conn.fetch(COLUMNS, rel) if not r[5]]   # generated: not copied
    pk = tuple(r[0] for r in await conn.fetch(PRIMARY_KEY, rel))
    if not pk:
        raise JobError(f'sharded table "{table}" has no primary key on shard {where}; '
                       "resharding applies changes by primary key", table=table)
    if key not in pk:
        raise JobError(f'the primary key of sharded table "{table}" ({", ".join(pk)}) does not '
                       f'contain its shard key column "{key}"', table=table)
    return TableInfo(table, key, tuple(r[0] for r in cols), tuple(r[1] for r in cols), pk)


async def install_hash(conn: asyncpg.Connection) -> None:
    """pgshard.hash() on a shard that lacks it (the same script the harness installs)."""
    if await conn.fetchval("SELECT to_regprocedure('pgshard.hash(text)') IS NULL"):
        await conn.execute(hash_sql())


async def copy_definition(src: asyncpg.Connection, dst: asyncpg.Connection, table: str) -> bool:
    """Create the table on dst as src defines it (columns, types, defaults, constraints,
    indexes), if dst lacks it. True if it was created."""
    if await exists(dst, table):
        return False
    rel = q.qualified(table)
    schema, _ = q.split_name(table)
    parts, sequences = [], []
    for name, typ, notnull, default, identity, generated in await src.fetch(COLUMNS, rel):
        col = f"{q.ident(name)} {typ}"
        if generated:
            col += f" GENERATED ALWAYS AS ({default}) STORED"
        elif identity:
            col += " GENERATED " + ("ALWAYS" if identity == "a" else "BY DEFAULT") + \
                " AS IDENTITY"
        elif default is not None:
            col += f" DEFAULT {default}"
            if "nextval(" in default:
                sequences.append(default.split("'")[1])
        if notnull:
            col += " NOT NULL"
        parts.append(col)
    for conname, definition in await src.fetch(CONSTRAINTS, rel):
        parts.append(f"CONSTRAINT {q.ident(conname)} {definition}")
    indexes = [r[0] for r in await src.fetch(INDEXES, rel)]
    async with dst.transaction():
        if schema != "public":
            await dst.execute(f"CREATE SCHEMA IF NOT EXISTS {q.ident(schema)}")
        for seq in sequences:
            await dst.execute(f"CREATE SEQUENCE IF NOT EXISTS {seq}")
        await dst.execute(f"CREATE TABLE {rel} ({', '.join(parts)})")
        for index in indexes:
            await dst.execute(index)
    return True


async def ensure_token_index(conn: asyncpg.Connection, table: str, key: str, job_id: str) -> None:
    """The job's token index on the table, built concurrently (an invalid one left by an
    interrupted build is dropped and built again)."""
    schema, _ = q.split_name(table)
    valid = await conn.fetchval(
        "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
        schema, q.token_index_name(job_id, table))
    if valid is False:
        await conn.execute(q.drop_token_index(table, job_id))
    if not valid:
        await conn.execute(q.create_token_index(table, key, job_id))


async def has_token_index(conn: asyncpg.Connection, table: str, job_id: str) -> bool:
    schema, _ = q.split_name(table)
    return bool(await conn.fetchval(
        "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
        schema, q.token_index_name(job_id, table)))
