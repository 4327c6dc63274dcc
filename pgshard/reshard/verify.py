"""Verification before the flip: per moving range, the row count and an order-independent
checksum (the sum of every row's hash) must agree between source and destination."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg

from pgshard.reshard import sqltext as q
from pgshard.reshard import tables
from pgshard.reshard.tables import TableInfo
from pgshard.ring.ring import TokenSpan

log = logging.getLogger("pgshard.reshard")


async def summary(conn: asyncpg.Connection, info: TableInfo, spans: Sequence[TokenSpan],
                  indexed: bool = False) -> dict[int, tuple[int, str]]:
    """{range number: (rows, checksum)} for the ranges that hold rows; indexed: through the
    job's token index (each range's rows read by an index scan, no hash per row)."""
    if not indexed:
        rows = await conn.fetch(q.checksum(info.name, info.columns, info.key, spans))
        return {r[0]: (r[1], r[2]) for r in rows}
    async with conn.transaction():
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_hashjoin",
                        "enable_mergejoin"):
            await conn.execute(f"SET LOCAL {setting} = off")
        rows = await conn.fetch(q.checksum_by_index(info.name, info.columns, info.key, spans))
    return {r[0]: (r[1], r[2]) for r in rows}


async def total(conn: asyncpg.Connection, info: TableInfo, spans: Sequence[TokenSpan] | None,
                indexed: bool = False) -> tuple[int, str]:
    """(rows, checksum) of all the spans together, in one pass over the table; indexed:
    through the job's token index; spans None: of the whole table."""
    async with conn.transaction():
        if indexed:
            await conn.execute("SET LOCAL enable_seqscan = off")
        row = await conn.fetchrow(q.checksum_total(info.name, info.columns, info.key, spans,
                                                   indexed))
    return row[0], row[1]


def total_mismatch(info: TableInfo, src: tuple[int, str], dst: tuple[int, str],
                   whole_table: bool = False) -> list[str]:
    """What differs between two totals (empty: they agree); whole_table: dst's is of its
    whole table (which should hold only the copied rows)."""
    if src == dst:
        return []
    where = "the whole table, which should hold only the copied rows" if whole_table \
        else "the moving ranges"
    return [f"{info.name}: source {src[0]} rows in the moving ranges, destination {dst[0]} "
            f"rows in {where}" + ("" if src[0] != dst[0] else ", checksums differ")]


def mismatches(info: TableInfo, spans: Sequence[TokenSpan], src: dict, dst: dict) -> list[str]:
    """What differs, one line per range (empty: the copy is exact)."""
    out = []
    for i in sorted(src.keys() | dst.keys()):
        a, b = src.get(i, (0, "0")), dst.get(i, (0, "0"))
        if a != b:
            s = spans[i - 1]
            out.append(f'{info.name} ({s.lo}, {s.hi}]: source {a[0]} rows, destination '
                       f'{b[0]} rows' + ("" if a[0] != b[0] else ", checksums differ"))
    return out


async def rows_by_key(conn: asyncpg.Connection, info: TableInfo,
                      keys: Sequence[tuple]) -> dict[tuple, str]:
    """{primary key: the row as text} for those of the keys (text forms) that exist."""
    out: dict[tuple, str] = {}
    for start in range(0, len(keys), KEY_BATCH):
        batch = keys[start:start + KEY_BATCH]
        arrays = [[k[i] for k in batch] for i in range(len(info.pk))]
        rows = await conn.fetch(q.rows_by_key(info.name, info.columns, info.pk, info.pk_types),
                                *arrays)
        for r in rows:
            out[batch[r[0] - 1]] = r[1]
    return out


async def touched(src: asyncpg.Connection, dst: asyncpg.Connection, info: TableInfo,
                  keys) -> list[str]:
    """The keys whose row differs between source and destination (one line each)."""
    keys = sorted(keys, key=lambda k: tuple("" if v is None else v for v in k))
    a, b = await rows_by_key(src, info, keys), await rows_by_key(dst, info, keys)
    return [f"{info.name} key {k}: source {a.get(k)!r}, destination {b.get(k)!r}"
            for k in keys if a.get(k) != b.get(k)]


KEY_BATCH = 5000


async def job_problems(conns, job, infos: dict, fresh: dict) -> list[str]:
    """What differs between every source and the target for a job's moving ranges (empty:
    verified). When each copy matched its snapshot (fresh: (source, database, table) ->
    the keys changed since), only those rows are compared by key; else every range's count
    and checksum on both sides, through the source's token index."""
    problems: list[str] = []
    keys = [(src, db, t) for (src, db), got in infos.items() for t in got]
    if all(fresh.get(k) is not None for k in keys):
        for (src, db), got in infos.items():
            for table, info in got.items():
                problems += await touched(
                    await conns.get(src, db), await conns.get(job.target, db), info,
                    fresh[(src, db, table)])
        log.debug("job %s: verified %d changed rows by key", job.id,
                  sum(len(fresh[k]) for k in keys))
        return problems
    for (src, db), got in infos.items():
        spans = job.moves_from(src)
        conn = await conns.get(src, db)
        dst = await conns.get(job.target, db) if got else None
        for info in got.values():
            # Each side through the job's token index where it has one (the source);
            # both at once: this runs inside the fence.
            a, b = await asyncio.gather(
                summary(conn, info, spans, await tables.has_token_index(conn, info.name, job.id)),
                summary(dst, info, spans, await tables.has_token_index(dst, info.name, job.id)))
            problems += mismatches(info, spans, a, b)
    return problems
