"""Moving the rows themselves: the bulk copy of a table's moving ranges from the source to
the destination (COPY binary, streamed), and the deletes that undo a copy or clean the
source after the flip, in batches."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg

from pgshard.reshard import sqltext as q
from pgshard.reshard.tables import TableInfo
from pgshard.ring.ring import TokenSpan

QUEUE_CHUNKS = 64
RANGES_PER_BATCH = 16
PAGES_PER_BATCH = 2000


async def copy_rows(src: asyncpg.Connection, dst: asyncpg.Connection, info: TableInfo,
                    spans: Sequence[TokenSpan], summarize=None,
                    indexed: bool = False) -> tuple[int, object]:
    """Copy the rows of the spans from src to dst; rows of the spans already on dst (an
    interrupted earlier copy) are deleted first, so the copy can be redone. The source is
    read in one repeatable-read snapshot, in which `summarize(src)` (if given) also runs, so
    that its result describes exactly the rows copied. indexed: the source has the job's
    token index, read instead of hashing every row, and the copy goes in batches of ranges,
    each its own destination transaction. Returns (rows copied, summarize's result)."""
    async with dst.transaction():
        await dst.execute(q.delete_ranges(info.name, info.key, spans))
    step = RANGES_PER_BATCH if indexed else len(spans)
    n = 0
    async with src.transaction(isolation="repeatable_read", readonly=True):
        if indexed:
            await src.execute("SET LOCAL enable_seqscan = off")
        for i in range(0, len(spans), step):
            n += await _copy(src, dst, info, spans[i:i + step], indexed)
        summary = await summarize(src) if summarize is not None else None
    return n, summary


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
                      *, bypass_guard: bool = False) -> int:
    """Delete the spans' rows from a table in batches of pages, each its own transaction."""
    pages = await conn.fetchval(
        "SELECT (pg_relation_size($1::regclass) / current_setting('block_size')::int)::bigint",
        q.qualified(info.name))
    total = 0
    first = 0
    while True:
        end = first + PAGES_PER_BATCH
        async with conn.transaction():
            if bypass_guard:
                await conn.execute("SET LOCAL pgshard.reshard_bypass = on")
            status = await conn.execute(
                q.delete_ranges_in_pages(info.name, info.key, spans, first, end))
        total += int(status.split()[-1])
        if end > pages:
            # Rows added beyond the last page meanwhile: one last pass over the rest.
            async with conn.transaction():
                if bypass_guard:
                    await conn.execute("SET LOCAL pgshard.reshard_bypass = on")
                status = await conn.execute(
                    q.delete_ranges_in_pages(info.name, info.key, spans, end, 2**32 - 1))
            return total + int(status.split()[-1])
        first = end
