"""Moving the rows themselves: the bulk copy of a table's moving ranges from the source to
the destination (COPY binary, streamed), and the deletes that undo a copy or clean the
source after the flip, in batches.

Strategy: with the job's token index on a table, both the copy and the deletes read the
ranges' rows through it (range conditions, a bitmap scan, no hash computed per row), a
batch of ranges per statement; without it the deletes go in batches of pages (a TID range
scan each), hashing each row's key once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg

from pgshard.reshard import sqltext as q
from pgshard.reshard.tables import TableInfo, has_token_index
from pgshard.ring.ring import TokenSpan

QUEUE_CHUNKS = 64
RANGES_PER_BATCH = 16         # without an estimate of the rows to copy
COPY_BATCH_ROWS = 1_000_000   # rows one destination transaction of the copy takes, about
PAGES_PER_BATCH = 2000
DELETE_BATCH_ROWS = 100_000    # rows one cleanup transaction deletes, about (each batch
MAX_RANGES_PER_DELETE = 256    # is a pass over the table: few large ones, not many small)


async def copy_rows(src: asyncpg.Connection, dst: asyncpg.Connection, info: TableInfo,
                    spans: Sequence[TokenSpan], summarize=None,
                    indexed: bool = False, alongside=None,
                    est_rows: int | None = None) -> tuple[int, object, object]:
    """Copy the rows of the spans from src to dst; rows of the spans already on dst (an
    interrupted earlier copy) are deleted first, so the copy can be redone. The source is
    read in one repeatable-read snapshot, in which `summarize(src)` (if given) also runs, so
    that its result describes exactly the rows copied. indexed: the source has the job's
    token index, read instead of hashing every row, and the copy goes in batches of ranges,
    each its own destination transaction (of about COPY_BATCH_ROWS given est_rows, the rows
    the spans hold: each batch is one pass over the source table). `alongside()` (if given) runs once the rows are
    copied, at the same time as summarize (it may use dst, not src). Returns (rows copied,
    summarize's result, alongside's result)."""
    async with dst.transaction():
        await dst.execute(q.delete_ranges(info.name, info.key, spans))
    step = len(spans)
    if indexed:
        step = RANGES_PER_BATCH if est_rows is None else batch_size(
            est_rows, len(spans), COPY_BATCH_ROWS, len(spans))
    n = 0
    async with src.transaction(isolation="repeatable_read", readonly=True):
        if indexed:
            await src.execute("SET LOCAL enable_seqscan = off")
        for i in range(0, len(spans), step):
            n += await _copy(src, dst, info, spans[i:i + step], indexed)
        summary, beside = await asyncio.gather(_maybe(summarize, src), _maybe(alongside))
    return n, summary, beside


async def _maybe(fn, *args):
    return await fn(*args) if fn is not None else None


async def _copy(src: asyncpg.Connection, dst: asyncpg.Connection, info: TableInfo,
                spans: Sequence[TokenSpan], indexed: bool) -> int:
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_CHUNKS)

    async def produce() -> None:
        try:
            await src.copy_from_query(
                q.select_ranges(info.name, info.columns, info.key, spans, indexed),
                output=chunks.put, format="binary")
        finally:
            await chunks.put(None)

    async def source():
        while (chunk := await chunks.get()) is not None:
            yield chunk

    schema, name = q.split_name(info.name)
    async with dst.transaction():
        producer = asyncio.create_task(produce())
        try:
            status = await dst.copy_to_table(name, schema_name=schema, columns=list(info.columns),
                                             source=source(), format="binary")
        except BaseException:
            producer.cancel()
            raise
        await producer
    return int(status.split()[-1])


async def delete_rows(conn: asyncpg.Connection, info: TableInfo, spans: Sequence[TokenSpan],
                      *, bypass_guard: bool = False, job_id: str | None = None,
                      est_rows: int | None = None) -> int:
    """Delete the spans' rows from a table in batches, each its own transaction: of ranges
    through the job's token index where the table has it (job_id), else of pages.
    est_rows: about how many rows the spans hold (sizes the first batch)."""
    if job_id is not None and await has_token_index(conn, info.name, job_id):
        first = 4 if not est_rows else batch_size(est_rows, len(spans), DELETE_BATCH_ROWS,
                                                  MAX_RANGES_PER_DELETE)
        return await _delete_by_index(conn, info, spans, bypass_guard, first)
    return await _delete_by_pages(conn, info, spans, bypass_guard)


async def _delete(conn: asyncpg.Connection, sql: str, bypass_guard: bool) -> int:
    async with conn.transaction():
        if bypass_guard:
            await conn.execute("SET LOCAL pgshard.reshard_bypass = on")
        await conn.execute("SET LOCAL enable_seqscan = off")
        return int((await conn.execute(sql)).split()[-1])


async def _delete_by_index(conn: asyncpg.Connection, info: TableInfo,
                           spans: Sequence[TokenSpan], bypass_guard: bool, per: int) -> int:
    """Batches of ranges, sized as it goes so that each deletes about DELETE_BATCH_ROWS."""
    total, i = 0, 0
    while i < len(spans):
        batch = spans[i:i + per]
        n = await _delete(conn, q.delete_ranges_indexed(info.name, info.key, batch),
                          bypass_guard)
        total += n
        i += len(batch)
        per = batch_size(n, len(batch), DELETE_BATCH_ROWS, MAX_RANGES_PER_DELETE)
    return total


def batch_size(rows: int, ranges: int, target_rows: int, most: int) -> int:
    """The ranges the next batch should take, from the rows the last one of `ranges` had."""
    if rows <= 0:
        return most
    return max(1, min(most, int(target_rows * ranges / rows)))


async def _delete_by_pages(conn: asyncpg.Connection, info: TableInfo,
                           spans: Sequence[TokenSpan], bypass_guard: bool) -> int:
    pages = await conn.fetchval(
        "SELECT (pg_relation_size($1::regclass) / current_setting('block_size')::int)::bigint",
        q.qualified(info.name))
    total = 0
    first = 0
    while True:
        end = first + PAGES_PER_BATCH
        total += await _delete(
            conn, q.delete_ranges_in_pages(info.name, info.key, spans, first, end), bypass_guard)
        if end > pages:
            # Rows added beyond the last page meanwhile: one last pass over the rest.
            return total + await _delete(
                conn, q.delete_ranges_in_pages(info.name, info.key, spans, end, 2**32 - 1),
                bypass_guard)
        first = end
