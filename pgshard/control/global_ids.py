"""Globally unique serial/identity/nextval() ids, run by the elected manager: every shard's
sequences behind declared tables are set to the shard's slot of the id space
(pgshard.ring.id_space), and an event trigger on each shard aligns sequences created later
(CREATE TABLE through the proxy) inside the very statement that creates them.

Strategy: a round (on every catalog change, and every RESCAN seconds) opens a transaction on
every primary, writes the shard's slot and the declared tables into pgshard.id_space (what
the trigger reads), and for sequences not yet aligned locks their tables (EXCLUSIVE: inserts
wait, reads go on) on every shard at once before reading how far each copy has gone, so the
first aligned value lies above every value any shard handed out. Aligned sequences need no
lock, so a steady-state round is one query per shard.
"""

from __future__ import annotations

import asyncio
import json
import logging

import asyncpg

from pgshard.background import Background
from pgshard.ring.catalog import Catalog
from pgshard.ring.id_space import IdSpace, plan

log = logging.getLogger("pgshard.ids")

STORE_KEY = "id_space"
TICK = 1.0
RESCAN = 30.0
CONNECT_TIMEOUT = 5.0
LOCK_TIMEOUT = "2s"
TRIGGER = "pgshard_align_sequences"

INSTALL_SQL = r"""
CREATE SCHEMA IF NOT EXISTS pgshard;
CREATE TABLE IF NOT EXISTS pgshard.id_space (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    slot integer NOT NULL,
    stride integer NOT NULL,
    tables text[] NOT NULL);
GRANT USAGE ON SCHEMA pgshard TO PUBLIC;
GRANT SELECT ON pgshard.id_space TO PUBLIC;
CREATE OR REPLACE FUNCTION pgshard.table_sequences(tables text[])
RETURNS TABLE (seq text, tbl text, increment bigint, start bigint, minv bigint, maxv bigint,
               last bigint)
LANGUAGE sql STABLE AS $$
    WITH links AS (
        SELECT d.objid AS seq, d.refobjid AS tbl FROM pg_depend d
         WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
           AND d.deptype IN ('a', 'i')
        UNION
        SELECT d.refobjid, ad.adrelid FROM pg_depend d JOIN pg_attrdef ad ON ad.oid = d.objid
         WHERE d.classid = 'pg_attrdef'::regclass AND d.refclassid = 'pg_class'::regclass),
    named AS (
        SELECT DISTINCT ON (s.oid) s.oid AS seqoid, format('%I.%I', sn.nspname, s.relname) AS seq,
               format('%I.%I', tn.nspname, t.relname) AS tbl,
               CASE WHEN tn.nspname = 'public' THEN lower(t.relname)
                    ELSE lower(tn.nspname || '.' || t.relname) END AS tkey
          FROM links l
          JOIN pg_class s ON s.oid = l.seq AND s.relkind = 'S'
          JOIN pg_namespace sn ON sn.oid = s.relnamespace
          JOIN pg_class t ON t.oid = l.tbl AND t.relkind IN ('r', 'p')
          JOIN pg_namespace tn ON tn.oid = t.relnamespace
         ORDER BY s.oid, t.oid)
    SELECT n.seq, n.tbl, q.seqincrement, q.seqstart, q.seqmin, q.seqmax,
           CASE WHEN has_sequence_privilege(n.seqoid, 'SELECT,USAGE')
                THEN pg_sequence_last_value(n.seqoid) END
      FROM named n JOIN pg_sequence q ON q.seqrelid = n.seqoid
     WHERE n.tkey = ANY(tables)
     ORDER BY n.seq
$$;
CREATE OR REPLACE FUNCTION pgshard.align_new_sequences() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    sp record;
    r record;
    res bigint;
    v bigint;
BEGIN
    SELECT slot, stride, tables INTO sp FROM pgshard.id_space;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    res := (sp.slot + 1) % sp.stride;
    FOR r IN SELECT * FROM pgshard.table_sequences(sp.tables) LOOP
        -- Only sequences that never handed out a value: one in use is the manager's to
        -- align, above what every shard's copy of it handed out.
        CONTINUE WHEN r.increment < 0 OR r.last IS NOT NULL;
        CONTINUE WHEN r.increment = sp.stride AND r.start % sp.stride = res;
        v := greatest(r.start, r.minv);
        v := v + (((res - v) % sp.stride) + sp.stride) % sp.stride;
        BEGIN
            EXECUTE format('ALTER SEQUENCE %s INCREMENT BY %s START WITH %s RESTART WITH %s',
                           r.seq, sp.stride, v, v);
        EXCEPTION WHEN insufficient_privilege THEN
            NULL;   -- another user's sequence: the manager aligns it
        END;
    END LOOP;
END
$$;
"""

TRIGGER_SQL = (f"CREATE EVENT TRIGGER {TRIGGER} ON ddl_command_end WHEN TAG IN "
               "('CREATE TABLE', 'ALTER TABLE', 'CREATE SEQUENCE', 'CREATE TABLE AS') "
               "EXECUTE FUNCTION pgshard.align_new_sequences()")

INSTALLED_SQL = ("SELECT to_regclass('pgshard.id_space') IS NOT NULL"
                 " AND to_regprocedure('pgshard.table_sequences(text[])') IS NOT NULL"
                 " AND to_regprocedure('pgshard.align_new_sequences()') IS NOT NULL")


def table_keys(catalog: Catalog) -> list[str]:
    """Declared tables as pgshard.table_sequences() names them (public. dropped, lower)."""
    out = []
    for table, _ in catalog.tables:
        name = table.lower()
        out.append(name[len("public."):] if name.startswith("public.") else name)
    return sorted(out)


async def load_space(store) -> tuple[IdSpace, int]:
    kv = await store.get(STORE_KEY)
    if kv is None:
        return IdSpace(), 0
    return IdSpace.from_json(json.loads(kv.value)), kv.revision


async def ensure_slots(store, shards) -> IdSpace:
    """The id space with a slot for every shard named, written with compare-and-swap."""
    from pgshard.store import CasFailed

    while True:
        space, revision = await load_space(store)
        grown = space.with_shards(shards)
        if grown == space and revision:
            return space
        try:
            await store.put(STORE_KEY, json.dumps(grown.to_json()).encode(),
                            expect_revision=revision)
            return grown
        except CasFailed:
            continue


class GlobalIds:
    """One per manager-capable process; acts only while `is_leader()`."""

    def __init__(self, store, catalog, is_leader):
        self.store = store
        self.catalog = catalog          # () -> current Catalog
        self.is_leader = is_leader
        self.last_error = ""
        self.no_trigger: set[str] = set()   # shards whose user may not create event triggers
        self._done_for: int | None = None
        self._bg = Background(self._run, "pgshard-global-ids")

    def start(self) -> None:
        self._bg.start()

    async def stop(self) -> None:
        await self._bg.stop()

    async def _run(self) -> None:
        since = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK)
            cat = self.catalog()
            if cat is None or not self.is_leader():
                self._done_for = None
                continue
            if cat.version == self._done_for and loop.time() - since < RESCAN:
                continue
            try:
                changed = await self.align(cat)
            except Exception as exc:   # logged once per distinct cause; retried next tick
                msg = f"{type(exc).__name__}: {exc}"
                if msg != self.last_error:
                    log.warning("global ids: aligning sequences failed: %s", msg)
                self.last_error = msg
                continue
            if self.last_error:
                log.info("global ids: sequences aligned again")
            self.last_error = ""
            self._done_for, since = cat.version, loop.time()
            for shard, seq, value in changed:
                log.info("global ids: %s sequence %s now starts at %d", shard, seq, value)

    async def align(self, catalog: Catalog) -> list[tuple[str, str, int]]:
        """One round over every primary; returns (shard, sequence, restart value) changed."""
        space = await ensure_slots(self.store, catalog.shard_names())
        tables = table_keys(catalog)
        conns: dict[str, asyncpg.Connection] = {}
        try:
            for sh in catalog.shards:
                conns[sh.name] = await asyncio.wait_for(asyncpg.connect(
                    sh.primary, timeout=CONNECT_TIMEOUT, statement_cache_size=0,
                    server_settings={"application_name": "pgshard-manager"}),
                    CONNECT_TIMEOUT + 1)
            for name, conn in conns.items():
                await self._install(name, conn)
            seqs: dict[str, list] = {}
            for name, conn in conns.items():
                await conn.execute("BEGIN")
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                await conn.execute(
                    "INSERT INTO pgshard.id_space (slot, stride, tables) VALUES ($1, $2, $3) "
                    "ON CONFLICT (one) DO UPDATE SET slot = EXCLUDED.slot, "
                    "stride = EXCLUDED.stride, tables = EXCLUDED.tables",
                    space.slot(name), space.stride, tables)
                seqs[name] = await self._sequences(conn, tables)
            todo = {name: [r for r in rows if _needs(space, name, r)]
                    for name, rows in seqs.items()}
            if any(todo.values()):
                # Lock on every shard first, then read again: nothing moves while we decide.
                for name, rows in todo.items():
                    for tbl in sorted({r["tbl"] for r in rows}):
                        await conns[name].execute(f"LOCK TABLE {tbl} IN EXCLUSIVE MODE")
                for name in todo:
                    seqs[name] = await self._sequences(conns[name], tables)
            floors: dict[str, int] = {}
            for rows in seqs.values():
                for r in rows:
                    seen = r["last"] if r["last"] is not None else r["start"] - 1
                    floors[r["seq"]] = max(floors.get(r["seq"], 0), seen)
            changed = []
            for name, rows in seqs.items():
                slot = space.slot(name)
                for r in rows:
                    if r["increment"] < 0:
                        continue
                    v = plan(slot, space.stride, r["increment"], r["start"], r["minv"],
                             r["maxv"], r["last"], floors[r["seq"]])
                    if v is None:
                        continue
                    await conns[name].execute(
                        f"ALTER SEQUENCE {r['seq']} INCREMENT BY {space.stride} "
                        f"START WITH {v} RESTART WITH {v}")
                    changed.append((name, r["seq"], v))
            for conn in conns.values():
                await conn.execute("COMMIT")
            return changed
        finally:
            for conn in conns.values():
                try:
                    await asyncio.wait_for(conn.close(), 2)
                except Exception:
                    conn.terminate()

    async def _install(self, shard: str, conn: asyncpg.Connection) -> None:
        if not await conn.fetchval(INSTALLED_SQL):
            await conn.execute(INSTALL_SQL)
        if await conn.fetchval("SELECT EXISTS (SELECT FROM pg_event_trigger WHERE evtname = $1)",
                               TRIGGER):
            return
        if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            if shard not in self.no_trigger:
                log.warning("global ids: shard %s: the shard's user is not a superuser, so no "
                            "event trigger aligns sequences as tables are created; they are "
                            "aligned within %d s instead (ids drawn before may repeat on "
                            "other shards)", shard, RESCAN)
            self.no_trigger.add(shard)
            return
        await conn.execute(TRIGGER_SQL)

    @staticmethod
    async def _sequences(conn: asyncpg.Connection, tables: list[str]) -> list:
        return await conn.fetch("SELECT * FROM pgshard.table_sequences($1::text[])", tables)


def _needs(space: IdSpace, shard: str, r) -> bool:
    from pgshard.ring.id_space import aligned

    return r["increment"] >= 0 and not aligned(space.slot(shard), space.stride, r["increment"],
                                                 r["start"], r["last"])
