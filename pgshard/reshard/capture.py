"""Change capture on a source shard: a publication for the sharded tables and a logical slot
with pgoutput, read with pg_logical_slot_peek_binary_changes and advanced only after the
changes are applied (so a crash between the two re-reads them: applying is idempotent).

Strategy: the slot is created before the bulk copy starts, so every change committed after
the copy's snapshot is in the slot (and some before it, which replay harmlessly: the last
change of each key wins). Changes are read a batch of whole transactions at a time, up to
the WAL flushed on the source; `flush_wal` forces a flush, since a server running with
synchronous_commit off may keep recent commits in its WAL buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from pgshard.protocol import pgoutput as po
from pgshard.reshard import sqltext as q

BATCH_CHANGES = 2000


@dataclass
class Batch:
    """Whole transactions read from a slot: their events, and where the slot may advance."""

    events: list[po.Event]
    end_lsn: int | None      # the end of the last transaction read (None: nothing read)


async def start(conn: asyncpg.Connection, slot: str, tables: Sequence[str]) -> None:
    """Create the publication and the slot if they do not exist yet (idempotent)."""
    if not await conn.fetchval("SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = $1)",
                               slot):
        await conn.execute(f"CREATE PUBLICATION {q.ident(slot)} FOR TABLE "
                           + ", ".join(q.qualified(t) for t in tables))
    if not await conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)", slot):
        await conn.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)


async def stop(conn: asyncpg.Connection, slot: str) -> None:
    """Drop the slot and the publication if they exist (idempotent)."""
    await conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                       "WHERE slot_name = $1", slot)
    await conn.execute(f"DROP PUBLICATION IF EXISTS {q.ident(slot)}")


async def flush_wal(conn: asyncpg.Connection) -> int:
    """Flush the source's WAL to disk and return the flushed LSN (a commit with an xid that
    wrote WAL, made synchronous, flushes everything before it)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = local")
        await conn.execute("SELECT pg_current_xact_id(), "
                           "pg_logical_emit_message(true, 'pgshard-flush', '')")
    return po.parse_lsn(await conn.fetchval("SELECT pg_current_wal_flush_lsn()::text"))


async def read(conn: asyncpg.Connection, slot: str, upto_lsn: int | None = None,
               limit: int = BATCH_CHANGES) -> Batch:
    """The next whole transactions in the slot (not consumed: see advance).

    end_lsn is where the slot may advance once they are applied: the end of the last
    transaction read, or, when the read stopped short of its limit, the WAL flushed before
    it began (everything up to there was decoded, including WAL of no published change,
    such as an index build, that would otherwise count as lag forever)."""
    flushed = po.parse_lsn(await conn.fetchval("SELECT pg_current_wal_flush_lsn()::text"))
    rows = await conn.fetch(
        "SELECT data FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, $3, "
        "'proto_version', '1', 'publication_names', $4)",
        slot, po.lsn_text(upto_lsn) if upto_lsn is not None else None, limit, slot)
    events = [po.decode(r[0]) for r in rows]
    end = None
    for ev in reversed(events):
        if isinstance(ev, po.Commit):
            end = ev.end_lsn
            break
    if len(rows) < limit:
        bound = flushed if upto_lsn is None else min(flushed, upto_lsn)
        end = max(end or 0, bound)
    return Batch(events, end)


async def advance(conn: asyncpg.Connection, slot: str, lsn: int) -> None:
    """Confirm the slot up to lsn (never backwards)."""
    await conn.execute("SELECT pg_replication_slot_advance(slot_name, $2::text::pg_lsn) "
                       "FROM pg_replication_slots WHERE slot_name = $1 "
                       "AND confirmed_flush_lsn < $2::text::pg_lsn", slot, po.lsn_text(lsn))


async def confirmed(conn: asyncpg.Connection, slot: str) -> int:
    text = await conn.fetchval("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                               "WHERE slot_name = $1", slot)
    if text is None:
        raise LookupError(f"replication slot {slot} is missing")
    return po.parse_lsn(text)


async def lag_bytes(conn: asyncpg.Connection, slot: str) -> int:
    """WAL written on the source that the slot has not confirmed yet."""
    v = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)"
                            "::bigint FROM pg_replication_slots WHERE slot_name = $1", slot)
    if v is None:
        raise LookupError(f"replication slot {slot} is missing")
    return max(int(v), 0)
